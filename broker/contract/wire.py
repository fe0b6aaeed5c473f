"""What every request of the contract shares: strict types, unknown fields ignored (a newer
sender's optional fields reach an older worker harmlessly), and one clear refusal naming the
first bad field."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.errors import InvalidInput


class Wire(BaseModel):
    # Strict: 2.5 is not a token count, True is not a seed and "7" is not a number.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """A field sent as null takes its default, as JSON clients expect of optional fields."""
        if isinstance(data, dict) and None in data.values():
            return {name: value for name, value in data.items() if value is not None}
        return data

    @classmethod
    def from_wire(cls, payload: Any) -> Self:
        """``payload`` as this request; :class:`InvalidInput` naming the bad field otherwise."""
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(problem(exc)) from None

    def to_wire(self) -> dict[str, Any]:
        """The request as the wire carries it: only the fields set."""
        return self.model_dump(by_alias=True, exclude_defaults=True)


class WireRequest(Wire):
    """A whole request, as a worker reads it."""

    # The limits of the caller's key that the worker judges, by name (accounts.limits, those
    # judged by "worker"); a frontend sets them from the key's admission.
    key_limits: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)

    def check_one_of(self, fields: dict[str, str]) -> None:
        """Refuse the request unless exactly one of ``fields`` (name: what it holds) is given."""
        given = [name for name in fields if getattr(self, name) is not None]
        if len(given) != 1:
            choices = ", ".join(f"'{name}' ({what})" for name, what in fields.items())
            raise ValueError(f"the request needs exactly one of {choices}; it has {given or 'none'}")


def problem(exc: ValidationError) -> str:
    """The most precise error of ``exc``, naming where it is (``'messages[0].role': ...``)."""
    # The deepest error is the most precise (of a union's members, the one that nearly fit),
    # and of equally deep ones, a broken bound says more than a mismatched type.
    problem = max(
        exc.errors(include_url=False), key=lambda error: (len(error["loc"]), not error["type"].endswith("_type"))
    )
    # A union's errors name the member tried ("stop", "str"): only fields and indexes are kept.
    path = [part for part in problem["loc"] if isinstance(part, int) or part in _field_names()]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    message = problem["msg"].removeprefix("Value error, ")
    return f"'{where}': {message}" if where else message


@cache
def _field_names() -> frozenset[str]:
    """The names (as the wire spells them) of every field of every contract model."""
    models: list[type[BaseModel]] = [Wire]
    names: set[str] = set()
    while models:
        model = models.pop()
        models.extend(model.__subclasses__())
        names.update(field.alias or name for name, field in model.model_fields.items())
    return frozenset(names)


class Answer(BaseModel):
    """What a worker answers, read leniently: any algorithm may answer a request (a package's
    ``run`` included), so fields it leaves out take their defaults and fields it adds are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def read(cls, answer: Any) -> Self:
        """``answer`` as this type: a field it does not have, or has in another shape, takes
        its default and the others are kept; all defaults when it is not a JSON object."""
        fields = dict(answer) if isinstance(answer, dict) else {}
        while True:
            try:
                return cls.model_validate(fields)
            except ValidationError as exc:
                wrong = {error["loc"][0] for error in exc.errors() if error["loc"]}
                if not wrong & fields.keys():
                    return cls()
                fields = {name: value for name, value in fields.items() if name not in wrong}

    def to_answer(self) -> dict[str, Any]:
        """The answer as the wire carries it: the fields it was given."""
        return self.model_dump(exclude_unset=True)
