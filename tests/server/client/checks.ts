// What a strict client generated from /openapi.json must refuse to compile (each `@ts-expect-error`
// below is an error tsc must find: where it finds none, the directive itself fails the build) and
// what it must take. tests/server/test_client.py compiles it beside client.ts.
import type { components } from "./api.js";

type UploadItem = components["schemas"]["UploadItem"];
type Attributes = components["schemas"]["Attributes"];
type ProductChange = components["schemas"]["ProductChange"];

// @ts-expect-error: an image by URL without its product_id
export const noProduct: UploadItem = { url: "https://shop.example/a.jpg" };
// @ts-expect-error: an embedding of words
export const words: UploadItem = { product_id: "sku-1", embedding: ["not", "numbers"] };
// @ts-expect-error: neither a URL nor an embedding
export const neither: UploadItem = { product_id: "sku-1" };
// @ts-expect-error: a price that is an object
export const badChange: ProductChange = { price: { amount: 3 } };

export const byUrl: UploadItem = { product_id: "sku-1", url: "https://shop.example/a.jpg", category: "shoes" };
export const byVector: UploadItem = { product_id: 7, embedding: [0.1, 0.2], price: "35.50" };
export const attributes: Attributes = { colour: "red", sizes: [38, 39], care: { wash: [30, "cold"], dry: null } };
export const change: ProductChange = { price: 19.99, attributes };
// reading an upload item's fields works on the type as generated
export const vector: number[] | null | undefined = byVector.embedding;
