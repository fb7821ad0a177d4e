-- the row-level security policies of imgsearch.webhook_endpoints: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE POLICY all_tenants ON imgsearch.webhook_endpoints AS PERMISSIVE FOR ALL TO imgsearch_admin, imgsearch_worker
    USING (true)
    WITH CHECK (true);

CREATE POLICY tenant_app ON imgsearch.webhook_endpoints AS PERMISSIVE FOR ALL TO imgsearch_app
    USING ((tenant = imgsearch.current_tenant()))
    WITH CHECK ((tenant = imgsearch.current_tenant()));

CREATE POLICY tenant_console ON imgsearch.webhook_endpoints AS PERMISSIVE FOR ALL TO imgsearch_console
    USING ((tenant = imgsearch.login_tenant()))
    WITH CHECK ((tenant = imgsearch.login_tenant()));
