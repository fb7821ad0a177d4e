-- the row-level security policies of imgsearch.image_counts: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE POLICY all_tenants ON imgsearch.image_counts AS PERMISSIVE FOR SELECT TO imgsearch_admin, imgsearch_worker
    USING (true);

CREATE POLICY tenant_app ON imgsearch.image_counts AS PERMISSIVE FOR SELECT TO imgsearch_app
    USING ((tenant = imgsearch.current_tenant()));

CREATE POLICY tenant_console ON imgsearch.image_counts AS PERMISSIVE FOR SELECT TO imgsearch_console
    USING ((tenant = imgsearch.login_tenant()));
