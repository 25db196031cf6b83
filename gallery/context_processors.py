from django.http import HttpRequest

from recommender import api


def encoder_notice(request: HttpRequest) -> dict[str, object]:
    """The active encoder for the page footer and admin, with the note when it is a fallback."""
    space, note = api.encoder_notice()
    return {"encoder_space": space, "encoder_note": note}
