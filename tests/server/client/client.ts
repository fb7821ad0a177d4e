// A shop's backend as a strict TypeScript client generated from /openapi.json would write it
// (openapi-typescript + openapi-fetch): each call gives only what it means, and reads the typed
// answers. tests/server/test_client.py generates api.d.ts from a live server, compiles this with
// tsc --strict and runs it against that server.
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

type Hit = components["schemas"]["HitResponse"];
type Problem = components["schemas"]["Problem"];

const [url, key, dimText] = process.argv.slice(2);
if (!url || !key || !dimText) throw new Error("usage: node out/client.js URL KEY DIM");
const dim = Number(dimText);
const client = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${key}` } });

function unit(axis: number): number[] {
  return Array.from({ length: dim }, (_, i) => (i === axis ? 1 : 0));
}

async function main(): Promise<void> {
  const uploaded = await client.POST("/v1/images", {
    body: {
      items: [
        { product_id: "sku-1", embedding: unit(0), category: "shoes", price: 20 },
        { product_id: "sku-2", embedding: unit(1), category: "shoes", price: "35.50", currency: "EUR" },
      ],
    },
  });
  if (uploaded.error) throw new Error(`upload: ${JSON.stringify(uploaded.error)}`);
  const ids: number[] = uploaded.data.ids;

  const found = await client.POST("/v1/search", { body: { vector: unit(0), k: 2 } });
  if (found.error) throw new Error(`search: ${JSON.stringify(found.error)}`);
  const hits: Hit[] = found.data.hits;

  const cheap = await client.POST("/v1/search", { body: { vector: unit(1), price_max: 30 } });
  const patched = await client.PATCH("/v1/products/{product_id}", {
    params: { path: { product_id: "sku-2" } },
    body: { price: 19.99 },
  });
  const image = await client.GET("/v1/images/{image_id}", { params: { path: { image_id: ids[0] ?? 0 } } });

  const hook = await client.POST("/v1/webhooks", {
    body: { url: "https://hooks.example.com/imgsearch", events: ["image.ready", "image.failed"] },
  });
  if (hook.error) throw new Error(`webhook: ${JSON.stringify(hook.error)}`);
  const secret: string = hook.data.secret;
  const listed = await client.GET("/v1/webhooks");

  const missing = await client.GET("/v1/images/{image_id}", { params: { path: { image_id: 999999999 } } });
  const problem: Problem | undefined = missing.error;

  console.log(
    JSON.stringify({
      ids,
      hits: hits.map((hit) => [hit.product_id, hit.score]),
      cheap: cheap.data?.hits.map((hit) => hit.product_id),
      changed: patched.data?.changed,
      category: image.data?.category,
      problem: [missing.response.status, problem?.type, problem?.detail],
      webhook: [secret.startsWith("whsec_"), listed.data?.endpoints.map((e) => e.events)],
    }),
  );
}

await main();
