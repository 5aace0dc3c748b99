"""Every error this project raises, in one tree.

Foreign exceptions (httpx, psycopg, SQLAlchemy, pydantic) are translated into these at exactly one
place each (the DigitalOcean client's transport edge, the ledger's database edge, the input
validators) and re-raised ``from`` the cause. A message says what happened and what to do next; it
never contains a token.

    SagaError
    ├── InputError                   bad input: nothing was written; fix the input and run again
    │   ├── UnknownKindError         a saga kind that is not in the registry
    │   └── UnknownStepError         a step name that is not in the registry
    ├── SagaNotFoundError            no saga with that id
    ├── SagaBusyError                another runner holds the saga's lease; nothing was written
    ├── ResourceBusyError            another unfinished saga acts on the same resource
    ├── DestructiveCapError          too many destructive sagas run at once for the account or the
    │                                customer deployment: refused (nothing written) or waiting
    ├── IdempotencyConflictError     another saga already recorded this step's idempotency key
    ├── LeaseLostError               this runner lost its lease mid-run (fencing); it stopped writing
    ├── DefinitionMismatchError      the saga's pinned steps differ from the registry's (rule 7)
    ├── SagaCancelledError           a cancel request was seen at a safe point
    ├── StepFailedError              a step's execute raised; the saga rolls back
    ├── StepTimeoutError             a step ran past its deadline: it is in doubt, looked up
    ├── LedgerError                  the database failed or is unreachable; the step fails with it
    │   └── LedgerUnavailableError   no server could be reached or started
    ├── ConfigurationError           a setting is missing or malformed (names the variable)
    └── ProviderError                anything the cloud provider did that we did not want
        ├── ProviderNotFoundError    HTTP 404: the resource does not exist (success for an undo)
        ├── ProviderRejectedError    HTTP 4xx other than 404/422-pending/429: our request is wrong
        │   └── PendingEventError    HTTP 422 "pending event": another action runs; try later
        ├── RateLimitedError         HTTP 429 that outlasted the client's wait budget
        ├── ProviderUnavailableError 5xx or transport failure on a request that is safe to repeat
        ├── AmbiguousWriteError      a write may or may not have happened (no response, 5xx after
        │                            send): resolve it by looking the resource up by its key
        ├── ProviderResponseError    a response we cannot parse (malformed JSON)
        │   └── ProviderNotReachedError  a 2xx that is not JSON at all (an HTML page at the URL):
        │                            something else answered; the request never reached the provider
        └── ProviderActionError      an action the provider ran ended ``errored`` or timed out
"""

from __future__ import annotations


class SagaError(Exception):
    """Base of every error raised by this project."""


class InputError(SagaError, ValueError):
    """Input that cannot be accepted; raised before anything is written."""


class UnknownKindError(InputError):
    """A saga kind that the registry does not know."""


class UnknownStepError(InputError):
    """A step name that the registry does not know."""


class SagaNotFoundError(SagaError, LookupError):
    """No saga run with the given id."""


class SagaBusyError(SagaError):
    """Another runner holds this saga; this one wrote nothing."""

    def __init__(self, saga_id: str, lease_expires_in: float | None = None) -> None:
        self.saga_id = saga_id
        self.lease_expires_in = lease_expires_in
        tail = (
            f"; its lease expires in {lease_expires_in:.0f}s if that runner is dead"
            if lease_expires_in is not None
            else ""
        )
        super().__init__(f"saga {saga_id} is busy: another runner holds it{tail}")


class ResourceBusyError(SagaError):
    """Another unfinished saga holds the resource (one active saga per droplet)."""

    def __init__(self, resource: str, holder: str) -> None:
        self.resource = resource
        self.holder = holder
        super().__init__(
            f"{resource} is held by saga {holder}, which is not finished: wait for it"
            f" (`sagas show {holder}`), or retry with a wait"
        )


class DestructiveCapError(SagaError):
    """Too many destructive sagas (offboard, rollback, update) run at once for the account or the
    customer deployment. ``recorded`` is False when the saga was refused and nothing was written;
    True when the saga is in the ledger, waiting for a place (``reason`` says why)."""

    def __init__(self, reason: str, *, saga_id: str | None = None, recorded: bool = False) -> None:
        self.reason = reason
        self.saga_id = saga_id
        self.recorded = recorded
        if recorded:
            message = (
                f"saga {saga_id} waits to start: {reason}; it starts when one of them finishes"
                f" (`sagas show {saga_id}` says why it waits; `sagas cancel {saga_id}` gives up)"
            )
        else:
            message = (
                f"refused: {reason}; nothing was written: try again when one of them finished,"
                " or wait for a place (`sagas run --wait SECONDS`)"
            )
        super().__init__(message)


class IdempotencyConflictError(SagaError):
    """Another saga already recorded this idempotency key; acting would touch its resource."""


class LeaseLostError(SagaError):
    """This runner's lease was taken over or expired; it must stop writing (fencing)."""


class DefinitionMismatchError(SagaError):
    """A resumed saga's pinned definition no longer matches the registry."""


class SagaCancelledError(SagaError):
    """A cancel request was seen at a safe point; the saga rolls back."""


class StepFailedError(SagaError):
    """A step's execute raised; carries the step and the cause's text."""

    def __init__(self, step_name: str, message: str) -> None:
        self.step_name = step_name
        super().__init__(f"step {step_name} failed: {message}")


class StepTimeoutError(SagaError):
    """A step's attempt ran past its deadline; what it did is in doubt until it is looked up."""

    def __init__(self, step_name: str, seconds: float) -> None:
        self.step_name = step_name
        self.seconds = seconds
        super().__init__(f"step {step_name} ran past its {seconds:.0f}s deadline: it is in doubt")


class LedgerError(SagaError):
    """The ledger database failed; the step that needed the write fails with it."""


class LedgerUnavailableError(LedgerError):
    """No ledger database could be reached or started."""


class ConfigurationError(SagaError):
    """A setting is missing or malformed."""


class ProviderError(SagaError):
    """Anything the cloud provider did that we did not want."""

    def __init__(
        self, message: str, *, status_code: int | None = None, request_id: str | None = None
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        super().__init__(message)


class ProviderNotFoundError(ProviderError):
    """HTTP 404: the resource does not exist."""


class ProviderRejectedError(ProviderError):
    """HTTP 4xx: the provider refused the request as it is."""


class PendingEventError(ProviderRejectedError):
    """HTTP 422 "Droplet already has a pending event": wait and try again."""


class RateLimitedError(ProviderError):
    """HTTP 429 that outlasted the client's wait budget."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ProviderUnavailableError(ProviderError):
    """5xx or transport failure on a request that is safe to repeat, after the client's retries."""


class AmbiguousWriteError(ProviderError):
    """A write whose outcome is unknown: look the resource up by its idempotency key."""


class ProviderResponseError(ProviderError):
    """A response body we could not understand."""


class ProviderNotReachedError(ProviderResponseError):
    """A 2xx answer that is not the provider's (not JSON: a captive portal, a wrong URL's web page).

    The request never reached the provider, so a write it carried was not applied: sending it
    again would not double anything, but it would meet the same page; the URL must be fixed."""


class ProviderActionError(ProviderError):
    """A provider action ended ``errored`` or did not finish in time."""
