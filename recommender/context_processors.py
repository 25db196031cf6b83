from django.http import HttpRequest

from recommender import runtime
from recommender.encoders import EncoderUnavailable


def encoder_notice(request: HttpRequest) -> dict[str, object]:
    """The active encoder for the page footer and admin, with the note when it is a fallback."""
    try:
        choice = runtime.encoder_choice()
    except EncoderUnavailable as exc:
        return {"encoder_space": None, "encoder_note": str(exc)}
    return {"encoder_space": choice.space, "encoder_note": choice.note}
