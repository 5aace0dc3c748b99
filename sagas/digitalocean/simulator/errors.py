"""The API error the handlers raise, rendered by the app as DigitalOcean's ``{id, message, request_id}``."""

from __future__ import annotations

NOT_FOUND_MESSAGE = "The resource you were accessing could not be found."


class ApiError(Exception):
    """An error response: HTTP status, DigitalOcean error id and human message."""

    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(f"{status} {error_id}: {message}")
        self.status = status
        self.error_id = error_id
        self.message = message


def not_found() -> ApiError:
    return ApiError(404, "not_found", NOT_FOUND_MESSAGE)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, "unprocessable_entity", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)
