"""`audio_inputs/text`: a source that sends one typed question as a turn (for the text-in tasks)."""

from __future__ import annotations

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import InputError
from omnivox.core.runtime.events import TextIn, TurnEnd, TurnStart
from omnivox.core.runtime.stage import Stage


class TextInput(Stage):
    """Source: TurnStart, TextIn(text), TurnEnd for each text in `texts` (one turn each)."""

    def __init__(self, text: str | list[str], session_id: str = "default", name: str | None = None):
        super().__init__(name or "text_in")
        self.texts = [text] if isinstance(text, str) else list(text)
        if not self.texts or any(not t.strip() for t in self.texts):
            raise InputError("the text input is empty", "pass the question as non-empty text")
        self.session_id = session_id

    async def produce(self):
        for turn_id, text in enumerate(self.texts):
            turn = {"session_id": self.session_id, "turn_id": turn_id}
            yield TurnStart(**turn)
            yield TextIn(text, **turn)
            yield TurnEnd(reason="done", **turn)


@hookimpl
def register_audio_inputs(registry):
    registry.add("text", TextInput, description="typed text as the user's turn (T1A2 / T1T2)")
