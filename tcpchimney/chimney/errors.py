"""Errors raised for wrong use of the offload contract.

Every error is a ``ContractError``. The subclasses say what was wrong: a state value out of range, a broken
invariant between state fields, a malformed offload tree, a request whose preconditions do not hold
(chimney-spec 3.0-3.5), a completion that does not answer a request, or bytes that do not decode to a message.
"""

from __future__ import annotations


class ContractError(Exception):
    """Base of every offload-contract error."""


class FieldRangeError(ContractError, ValueError):
    """A state or message field is outside its range (e.g. a VLAN ID above 4094, a port of 0)."""


class InvariantError(ContractError, ValueError):
    """Fields are each in range but inconsistent together (chimney-spec 9.5, e.g. SndUna <= SndNxt <=
    SndMax)."""


class TreeError(ContractError, ValueError):
    """An offload tree is malformed: wrong layer order, a TCP block with dependents, a role without state."""


class PreconditionError(ContractError):
    """A request is not allowed now (chimney-spec 3.1-3.5 ordering rules)."""


class NotOffloadableError(PreconditionError):
    """A TCP connection in CLOSED, LISTEN, SYN-SENT, SYN-RECEIVED or TIME-WAIT cannot be offloaded (spec
    2.4)."""


class UnknownObjectError(PreconditionError):
    """The request names an object the host never offloaded (or already terminated)."""


class AlreadyOffloadedError(PreconditionError):
    """A second offload of an object that is offloaded or being offloaded (spec 3.1)."""


class OperationInFlightError(PreconditionError):
    """The object has an offload, update or terminate in flight that this request must wait for (spec 3.3,
    3.5)."""


class InvalidatedError(PreconditionError):
    """Invalidated objects are never updated (spec 3.3) and never relinked to."""


class DependentsRemainError(PreconditionError):
    """A neighbor or path with linked dependents cannot be terminated unless they are terminated too (spec
    3.5)."""


class ProtocolViolationError(ContractError):
    """A target answered outside the contract: unknown request id, wrong completion type, illegal status."""


class CodecError(ContractError, ValueError):
    """Bytes that do not decode to a contract message (truncated, unknown tag, trailing bytes)."""
