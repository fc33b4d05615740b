"""aLAN on Discord: `app.serve(settings, conversation, scheduler)` runs the bot until cancelled.

Modules: `app` (the client, voice connections per server, and `serve`), `commands` (the slash commands and
/clone), `text` (mentions in text channels), `session` (one voice channel: listening, turns, replies), `listen`
(who is speaking, cut into utterances), `speak` (a reply played as it is made), `audio` (Discord's 48 kHz stereo
PCM frames), `recovery` (on start, the turns a stopped process left unanswered), `shards` (which servers are this
process's when Discord's shards are split across processes), and `receive/` (voice receive, which discord.py
lacks: RTP, transport decryption, DAVE, jitter buffer, Opus).

`import discord` in these modules is discord.py: imports are absolute, so this package (`bot.discord`) never
shadows it.
"""
