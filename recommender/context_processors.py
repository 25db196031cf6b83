from django.http import HttpRequest

from recommender import runtime
from recommender.encoders import EncoderUnavailable


def encoder_notice(request: HttpRequest) -> dict[str, object]:
    """The active encoder for the page footer and admin, with the note when it is a fallback."""
    try:
        choice = runtime.encoder_choice()
        space = runtime.active_space()
    except EncoderUnavailable as exc:
        return {"encoder_space": None, "encoder_note": str(exc)}
    # The note speaks of the encoder: it holds while a head projects that encoder's vectors.
    note = choice.note if runtime.space_encoder_id(space) == choice.space else None
    return {"encoder_space": space, "encoder_note": note}
