"""aLAN on Telegram: `app.serve(settings, conversation, scheduler)` runs the bot until cancelled.

Modules: `app` (the application, its handlers, and `serve`), `send` (retries, texts, chat action), `media`
(audio in, size and length caps), `turn` (a turn as voice notes), `clone` (/clone), `commands` (the other
commands), `webhook` (the webhook server, storing updates in the shared inbox), `chat_lanes` (one chat's updates
in order across processes, under a leased claim), `chat_leases` (claiming and renewing those leases),
`lane_services` (what a process taking over a chat must know), `recovery` (on start, the turns a stopped process
left unanswered), `common` (what the handlers share).
"""
