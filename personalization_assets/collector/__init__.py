"""The event collector: a Segment/RudderStack-compatible HTTP tracking API that writes the landing zone,
plus the consent preference center. Run it with `personalization collect`.

Modules: `config` (settings), `auth` (write keys; the preference center's signed subject tokens), `limits`
(body, size and type limits), `messages` (stamping), `dedup` (durable messageId index), `writer`
(group-committed durable writes), `metrics`,
`tracking_api` (the /v1 endpoints), `preferences` + `preference_store` + `pages` (preference center),
`app` (the ASGI app) and `server` (uvicorn).
"""
