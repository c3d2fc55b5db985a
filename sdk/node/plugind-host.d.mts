// TypeScript looks for the types of plugind-host.mjs in plugind-host.d.mts; they live in plugind-host.d.ts.
export * from "./plugind-host.js";
