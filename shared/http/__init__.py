"""The HTTP layer both services share: error envelope and status table, middleware, uvicorn runner.

- ``shared.http.errors``: ``{"error": {"code", "message"}}`` for every error, one exception -> status
  table per service (built from ``SHARED_ROWS`` plus the service's rows), and handlers for domain errors,
  request validation and routing (404, 405 with a complete ``Allow``);
- ``shared.http.middleware``: request id (``X-Request-ID`` on every response, 500 included), body limit
  (413 ``payload_too_large``) and body timeout (408), a pre-body guard (token before body), the
  catch-all 500 envelope, JSON access logs;
- ``shared.http.server``: uvicorn on h11 with header/keep-alive timeouts and a connection limit, and
  JSON answers for what the server itself refuses.
"""
