"""The HTTP transport: a drop-in for upstream Mini-Omni's server (`POST /chat`), a JSON event stream
(`POST /v1/chat`) and a browser page (`GET /`).

wav.py (the posted question and the streamed WAV header), service.py (the aiohttp server: routes, limits,
errors, cancellation), stages.py (`audio_inputs/http`, `audio_outputs/http`, the `http` transport and its
`omnivox serve` option), page/ (index.html, app.js).
"""

import aiohttp  # noqa: F401  (the `http` extra: without it this plugin is skipped, naming the extra)

from omnivox.plugins.http.stages import register_audio_inputs, register_audio_outputs, register_transports

__all__ = ["register_audio_inputs", "register_audio_outputs", "register_transports"]
