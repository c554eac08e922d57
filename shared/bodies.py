"""Request bodies as pydantic v2 models, declared once: they validate (`validated`) and they
describe (`webhook.openapi` makes the JSON Schema of each from the same model).

Each field's check is the one `shared.fields` and `shared.money` have always made, run by
pydantic as a BeforeValidator: its InvalidInput is not a ValueError, so it passes through
pydantic unchanged, with the message and field it always had. Every field has a default and
defaults are validated too, so a missing field gets the same 400 as a null one (the checks' own
"required" rule); the JSON Schema's `required` is given by `required`. Fields are checked in the
order declared; a rule across fields is a model validator, "before" the fields or "after" them.

Money is a string with two decimals (`"12.34"`) or an integer of whole units, never a JSON number
with a fraction (SPEC; `parse_cents` refuses a float): its schema is integer or string, never
number. The money checks take their limits from the validation context (`validated`'s keyword
arguments): `max_amount`, and `min_amount` (1 cent unless given). Bodies allow fields they do not
name (the parsers always ignored them). The Celery tasks get the same JSON as the routes, so the
parsers in shared/ that use these models are the one entry for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, WithJsonSchema

from shared import fields, profiles
from shared.errors import InvalidInput
from shared.money import parse_cents

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ID_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "pattern": ID_PATTERN}, {"type": "integer", "minimum": 0}],
    "description": "an id: 1 to 64 letters, digits or _.:- (a whole number is taken as its digits)"}
MONEY_IN_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^\s*-?[0-9]+(\.[0-9]{1,2})?\s*$"}],
    "description": 'money: a string such as "12.34", or an integer of whole units; never a float'}

M = TypeVar("M", bound=BaseModel)


def _checked(check: Any, schema: dict[str, Any]) -> Any:
    def run(value: Any, info: ValidationInfo) -> Any:
        return check(value, info.field_name)

    return (BeforeValidator(run), WithJsonSchema(schema))


def _optional(check: Any) -> Any:
    """An optional field's check: null stays null (the default; absent is told apart by the
    model's `model_fields_set`)."""
    return lambda value, field: None if value is None else check(value, field)


def _nullable(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    nullable: dict[str, Any] = {"anyOf": [schema, {"type": "null"}]}
    return nullable if description is None else {**nullable, "description": description}


def _limits(info: ValidationInfo) -> tuple[int, int | None]:
    context = info.context or {}
    return context.get("min_amount", 1), context.get("max_amount")


def _signed_amount(value: Any, info: ValidationInfo) -> int:
    _, limit = _limits(info)
    return parse_cents(value, info.field_name or "amount", minimum=None if limit is None else -limit, maximum=limit)


def _amount(value: Any, info: ValidationInfo) -> int:
    minimum, maximum = _limits(info)
    return parse_cents(value, info.field_name or "amount", minimum=minimum, maximum=maximum)


def _optional_amount(value: Any, info: ValidationInfo) -> int | None:
    return None if value is None else _amount(value, info)


def _optional_positive_amount(value: Any, info: ValidationInfo) -> int | None:
    _, limit = _limits(info)
    return None if value is None else parse_cents(value, info.field_name or "amount", minimum=0, maximum=limit)


def _text(max_length: int) -> Any:
    return lambda value, field: fields.text(value, field, max_length=max_length)


def _route_payload(value: Any) -> Any:
    return fields.route_payload({"route_payload": value})


def _iou_id(value: Any) -> int | None:
    """An IOU's id, as its pay route puts it in a payment (the task gets the same JSON)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"iou_id: {value!r} is not an IOU id", field="iou_id")
    return value


CheckedId = Annotated[str, *_checked(fields.identifier, ID_SCHEMA)]
CheckedOptionalId = Annotated[str | None, *_checked(_optional(fields.identifier), _nullable(ID_SCHEMA))]
CheckedFlag = Annotated[bool, *_checked(fields.boolean, {"type": "boolean"})]
CheckedOptionalFlag = Annotated[bool | None, *_checked(_optional(fields.boolean), {
    "type": ["boolean", "null"], "description": "null: the default; absent: keep the stored value"})]
CheckedEmail = Annotated[str, *_checked(fields.email, {"type": "string", "maxLength": 254,
                                                       "description": "one plain address, local@domain.tld"})]
CheckedName = Annotated[str, *_checked(_text(100), {
    "type": "string", "minLength": 1, "maxLength": 100, "description": "no control characters"})]
CheckedText80 = Annotated[str, *_checked(_text(80), {"type": "string", "maxLength": 80})]
CheckedText200 = Annotated[str, *_checked(_text(200), {"type": "string", "maxLength": 200})]
CheckedText255 = Annotated[str, *_checked(_text(255), {"type": "string", "maxLength": 255})]
CheckedAmount = Annotated[int, BeforeValidator(_amount), WithJsonSchema(MONEY_IN_SCHEMA)]
CheckedOptionalAmount = Annotated[int | None, BeforeValidator(_optional_amount),
                                  WithJsonSchema(_nullable(MONEY_IN_SCHEMA, MONEY_IN_SCHEMA["description"]))]
CheckedSignedAmount = Annotated[int, BeforeValidator(_signed_amount), WithJsonSchema(MONEY_IN_SCHEMA)]
CheckedOptionalPercent = Annotated[Decimal | None, *_checked(_optional(fields.percent), {
    "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
    "description": '0 to 100, e.g. "2.50" (admin); null: the default; absent: keep the stored value'})]
CheckedOptionalMinimum = Annotated[int | None, BeforeValidator(_optional_positive_amount), WithJsonSchema({
    "anyOf": [*MONEY_IN_SCHEMA["anyOf"], {"type": "null"}],
    "description": "money (0 or more); null: the default, 0.00; absent: keep the stored value"})]
CheckedOptionalBsb = Annotated[str | None, *_checked(_optional(profiles.bank_bsb), {
    "type": ["string", "null"], "description": "123456 or 123-456; null: clear it; absent: keep it"})]
CheckedOptionalAccount = Annotated[str | None, *_checked(_optional(profiles.bank_account), {
    "type": ["string", "null"], "description": "5 to 9 digits; null: clear it; absent: keep it"})]
# What a callback hands back (a payment's, a transfer's, an IOU's).
CheckedRoutePayload = Annotated[Any, BeforeValidator(_route_payload), WithJsonSchema(
    {"description": "handed back in the callback, as sent (at most 2000 characters)"})]
CheckedOptionalIouId = Annotated[int | None, BeforeValidator(_iou_id), WithJsonSchema(
    {"type": ["integer", "null"], "minimum": 1, "description": "set by the IOU's pay route"})]


class Validating(BaseModel):
    """A request body: fields it does not name are ignored, defaults are checked too."""

    model_config = ConfigDict(extra="allow", validate_default=True)


def validated(model: type[M], body: Mapping[str, Any], **context: Any) -> M:
    """`body` (a JSON object) as `model`, or the 400 of CONTRACT naming the field. `context`
    reaches the field checks (`max_amount`, `min_amount`)."""
    try:
        return model.model_validate(body, context=context or None)
    except ValidationError as exc:  # a shape the field checks did not see first
        problem = exc.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "body"
        raise InvalidInput(f"{field}: {problem['msg']}", field=field) from None


def required(*names: str, hidden: tuple[str, ...] = ()) -> Any:
    """The JSON Schema's `required` (the fields' defaults are only there to be validated);
    `hidden` fields are not the client's to send (a route sets them from its path)."""
    def edit(schema: dict[str, Any]) -> None:
        schema["required"] = list(names)
        for name in names:
            schema["properties"][name].pop("default", None)
        for name in hidden:
            del schema["properties"][name]

    return edit


def declared(given: BaseModel) -> dict[str, Any]:
    """The model's own fields and their checked values (not the extra ones it ignored)."""
    return {name: getattr(given, name) for name in type(given).model_fields}
