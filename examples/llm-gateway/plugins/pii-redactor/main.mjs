// pii-redactor: the gateway's onPrompt hook on the Node SDK.
//
// The payload is `{ messages: [ { role, content } ] }`; every string `content`, and the `text` of
// every part of a `content` list (OpenAI's multi-part messages), is redacted:
// e-mail addresses become `[email]`, phone numbers `[phone]` (E.164 `+15551234567`,
// `+1 555-123-4567`, `(555) 123-4567`, `555-123-4567`, `555.123.4567`, `555 123 4567`).

import { serve } from "../../../../sdk/node/plugind-sdk.mjs";

const EMAIL = /[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}/g;
// An optional country code, then 3-3-4 digits with optional brackets and separators; or E.164.
const PHONE = /(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}\b|\+\d{8,15}\b/g;

export const redact = (text) => text.replace(EMAIL, "[email]").replace(PHONE, "[phone]");

// A message's `content`: a string, or a list of parts whose `text` strings are redacted (other
// parts, an image say, pass as they are).
const redactContent = (content) => {
  if (typeof content === "string") return redact(content);
  if (Array.isArray(content)) {
    return content.map((part) => (typeof part?.text === "string" ? { ...part, text: redact(part.text) } : part));
  }
  return content;
};

serve({
  hooks: {
    onPrompt: (payload) => ({
      ...payload,
      messages: (payload?.messages ?? []).map((m) => (m && "content" in m ? { ...m, content: redactContent(m.content) } : m)),
    }),
  },
});
