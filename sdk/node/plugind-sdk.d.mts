// TypeScript looks for the types of plugind-sdk.mjs in plugind-sdk.d.mts; they live in plugind-sdk.d.ts.
export * from "./plugind-sdk.js";
