"""A local stand-in for the Hugging Face Hub, split by concern.

`objects` (blobs, entries, commits), `store` (repos, refs, history, discussions), `wire`
(HTTP plumbing), `api_read` / `api_write` / `api_discussions` (routes), `seeding` (the Python
back door) and `server` (`LocalHub`). Import `LocalHub` from `pearl_bot.testing.hub_server`.
"""
