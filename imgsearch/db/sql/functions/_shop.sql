-- imgsearch._shop: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._shop(tenant text)
 RETURNS text
 LANGUAGE sql
 STABLE
RETURN COALESCE(tenant, imgsearch.login_tenant());
