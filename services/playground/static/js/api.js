// The playground's own JSON API (/api/*): every error arrives as {"error": {"code", "message"}}.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", json, form } = {}) {
  const init = { method, headers: {} };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `the playground server at ${location.origin} is not answering (${e.message}); is it still running?`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const err = body && body.error;
    throw new ApiError(resp.status, err ? err.code : `http_${resp.status}`,
      err ? err.message : `${resp.status} ${resp.statusText}: ${text.slice(0, 200)}`);
  }
  return body;
}

// Shared page state: the last /api/status answer.
export const state = { status: null };

export function sourceUrl(id) {
  const bank = state.status && state.status.bank;
  if (!bank || !bank.ok || !bank.provenance || !bank.provenance.available) return null;
  return id !== null && id !== undefined && id < bank.base_size ? `/api/sources/${id}.png` : null;
}
