-- the row-level security policies of imgsearch.facet_members: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE POLICY all_tenants ON imgsearch.facet_members AS PERMISSIVE FOR SELECT TO imgsearch_admin, imgsearch_worker
    USING (true);

CREATE POLICY tenant_app ON imgsearch.facet_members AS PERMISSIVE FOR SELECT TO imgsearch_app
    USING ((tenant = imgsearch.current_tenant()));

CREATE POLICY tenant_console ON imgsearch.facet_members AS PERMISSIVE FOR SELECT TO imgsearch_console
    USING ((tenant = imgsearch.login_tenant()));
