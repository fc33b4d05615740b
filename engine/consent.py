"""The statement a person confirms before a voice is cloned.

A module of its own, free of heavy imports, so that `alan voice clone --help` can show it without loading
the engine (engine.voices, which stores the statement with each voice, brings the store and audio codecs).
"""

CONSENT_STATEMENT = "This is my own voice, or I have the speaker's permission to clone it."
