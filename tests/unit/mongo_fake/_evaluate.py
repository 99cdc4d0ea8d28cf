"""Query filters, aggregation expressions and updates, interpreted from MongoDB's manual.

The fakes use this instead of pattern-matching the store's own constants, so that a test
can disagree with the code: the store's `$expr`, its pipeline updates and its change
stream stages are EVALUATED here, operator by operator, as the manual describes them.
Only the operators the store uses are implemented; any other raises NotImplementedError
(a fake that guessed would believe the code again). Each rule cites its page.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson.binary import Binary
from bson.objectid import ObjectId


class _Missing:
    """A field that does not exist (distinct from null, as the manual distinguishes)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
REMOVE: Any = type("_Remove", (), {"__repr__": lambda self: "$$REMOVE"})()


# --- BSON values -------------------------------------------------------------------
# https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/ : MinKey,
# Null, Numbers, Symbol/String, Object, Array, BinData, ObjectId, Boolean, Date,
# Timestamp, Regex, MaxKey. A non-existent field compares as null there.


def type_rank(value: Any) -> int:
    if value is MISSING or value is None:
        return 1
    if isinstance(value, bool):
        return 8
    if isinstance(value, int | float):
        return 2
    if isinstance(value, str):
        return 3
    if isinstance(value, Mapping):
        return 4
    if isinstance(value, list | tuple):
        return 5
    if isinstance(value, bytes | Binary):
        return 6
    if isinstance(value, ObjectId):
        return 7
    if isinstance(value, _dt.datetime):
        return 9
    raise NotImplementedError(f"no BSON order for {type(value).__name__}")


def _as_utc(value: _dt.datetime) -> _dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=_dt.UTC)


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 in BSON comparison order (arrays and objects element by element)."""
    ra, rb = type_rank(a), type_rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 1:
        return 0
    if ra == 9:
        a, b = _as_utc(a), _as_utc(b)
    if ra == 4:
        return compare(list(a.items()), list(b.items()))
    if ra == 5:
        for x, y in zip(a, b, strict=False):
            c = compare(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if ra == 6:
        a, b = bytes(a), bytes(b)
    if isinstance(a, tuple):  # an (key, value) pair of an object
        return compare(list(a), list(b))
    return int((a > b) - (a < b))


def equal(a: Any, b: Any) -> bool:
    return type_rank(a) == type_rank(b) and compare(a, b) == 0


# --- documents ---------------------------------------------------------------------


def clone(value: Any) -> Any:
    """A deep copy of a document: containers copied, scalars (immutable) shared."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def clone_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: clone(v) for k, v in doc.items()}


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING. Into an array, a number is a position
    ("holds.0": its first element) and a name is that field of each embedded document
    that has it (a list of them, which a condition then matches element by element).
    https://www.mongodb.com/docs/manual/tutorial/query-arrays/#query-for-an-element-by-the-array-index-position
    https://www.mongodb.com/docs/manual/tutorial/query-array-of-documents/"""
    value = doc
    for part in path.split("."):
        if isinstance(value, list):
            if part.isdigit():
                value = value[int(part)] if int(part) < len(value) else MISSING
            else:
                found = [v[part] for v in value if isinstance(v, Mapping) and part in v]
                value = found if found else MISSING
            if value is MISSING:
                return MISSING
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return MISSING
    return value


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """$set semantics: create the embedded documents a dotted path needs.
    https://www.mongodb.com/docs/manual/reference/operator/update/set/"""
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = doc.get(part)
        if not isinstance(nxt, dict):
            nxt = doc[part] = {}
        doc = nxt
    doc[parts[-1]] = value


def unset_path(doc: dict[str, Any], path: str) -> None:
    """$unset: remove the field if it is there; nothing otherwise."""
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = doc.get(part)
        if not isinstance(nxt, dict):
            return
        doc = nxt
    doc.pop(parts[-1], None)


# --- query filters -------------------------------------------------------------------


def matches(doc: Mapping[str, Any], flt: Mapping[str, Any], now: _dt.datetime) -> bool:
    """Does `doc` match the query filter (implicit $and of its fields)?
    https://www.mongodb.com/docs/manual/tutorial/query-documents/"""
    for key, cond in flt.items():
        if key == "$and":
            ok = all(matches(doc, c, now) for c in cond)
        elif key == "$or":
            ok = any(matches(doc, c, now) for c in cond)
        elif key == "$nor":
            ok = not any(matches(doc, c, now) for c in cond)
        elif key == "$expr":
            # https://www.mongodb.com/docs/manual/reference/operator/query/expr/
            ok = truthy(evaluate(cond, doc, now))
        elif key.startswith("$"):
            raise NotImplementedError(f"query operator {key}")
        else:
            ok = _field_matches(get_path(doc, key), cond, now)
        if not ok:
            return False
    return True


def _is_operator_doc(cond: Any) -> bool:
    return isinstance(cond, Mapping) and bool(cond) and all(k.startswith("$") for k in cond)


def _field_matches(value: Any, cond: Any, now: _dt.datetime) -> bool:
    if not _is_operator_doc(cond):
        return _eq(value, cond)
    return all(_operator(value, op, arg, now) for op, arg in cond.items())


def _eq(value: Any, wanted: Any) -> bool:
    # null matches a null field and a missing one:
    # https://www.mongodb.com/docs/manual/tutorial/query-for-null-fields/
    if wanted is None:
        return value is None or value is MISSING
    if value is MISSING:
        return False
    # An array field matches when it equals the value or one element does:
    # https://www.mongodb.com/docs/manual/tutorial/query-arrays/
    if isinstance(value, list) and not isinstance(wanted, list):
        return any(equal(v, wanted) for v in value)
    return equal(value, wanted)


def _bracketed(value: Any, wanted: Any, test: Any) -> bool:
    """$gt/$gte/$lt/$lte compare only values of the query value's type (type bracketing):
    https://www.mongodb.com/docs/manual/reference/method/db.collection.find/#type-bracketing"""
    candidates = value if isinstance(value, list) else [value]
    return any(
        c is not MISSING and type_rank(c) == type_rank(wanted) and bool(test(compare(c, wanted)))
        for c in candidates
    )


def _operator(value: Any, op: str, arg: Any, now: _dt.datetime) -> bool:
    # https://www.mongodb.com/docs/manual/reference/operator/query/ (comparison, logical,
    # element and array operators)
    if op == "$eq":
        return _eq(value, arg)
    if op == "$ne":
        return not _eq(value, arg)
    if op == "$gt":
        return _bracketed(value, arg, lambda c: c > 0)
    if op == "$gte":
        return _bracketed(value, arg, lambda c: c >= 0)
    if op == "$lt":
        return _bracketed(value, arg, lambda c: c < 0)
    if op == "$lte":
        return _bracketed(value, arg, lambda c: c <= 0)
    if op == "$in":
        if isinstance(value, str) and all(isinstance(a, str) for a in arg):
            return value in set(arg)  # the same answer, without comparing one by one
        return any(_eq(value, a) for a in arg)
    if op == "$nin":
        return not any(_eq(value, a) for a in arg)
    if op == "$all":
        return isinstance(value, list) and all(_eq(value, a) for a in arg)
    if op == "$exists":
        return (value is not MISSING) == bool(arg)
    if op == "$not":
        return not _field_matches(value, arg, now)
    if op == "$type":
        # https://www.mongodb.com/docs/manual/reference/operator/query/type/ (by alias;
        # an array field matches when an element has the type)
        kinds = {"date": _dt.datetime, "string": str, "object": Mapping, "bool": bool}
        if arg not in kinds:
            raise NotImplementedError(f"$type {arg!r}")
        candidates = value if isinstance(value, list) else [value]
        return any(isinstance(c, kinds[arg]) for c in candidates)
    raise NotImplementedError(f"query operator {op}")


# --- aggregation expressions -----------------------------------------------------------


def truthy(value: Any) -> bool:
    """false, null, 0 and missing are false; everything else is true (arrays too):
    https://www.mongodb.com/docs/manual/reference/operator/aggregation/and/#behavior"""
    if value is MISSING or value is None or value is False:
        return False
    return not (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


def evaluate(expr: Any, doc: Mapping[str, Any], now: _dt.datetime) -> Any:
    """An aggregation expression over `doc`: field paths, $$NOW, $$REMOVE and the
    operators below. https://www.mongodb.com/docs/manual/meta/aggregation-quick-reference/"""
    if isinstance(expr, str):
        if expr.startswith("$$"):
            return _variable(expr[2:], doc, now)
        if expr.startswith("$"):
            return get_path(doc, expr[1:])
        return expr
    if isinstance(expr, list):
        return [evaluate(e, doc, now) for e in expr]
    if isinstance(expr, Mapping):
        if len(expr) == 1:
            ((op, arg),) = expr.items()
            if op.startswith("$"):
                return _expression(op, arg, doc, now)
        # An expression object: each field is an expression.
        out = {}
        for key, sub in expr.items():
            value = evaluate(sub, doc, now)
            if value is not MISSING and value is not REMOVE:
                out[key] = value
        return out
    return expr


def _variable(name: str, doc: Mapping[str, Any], now: _dt.datetime) -> Any:
    # https://www.mongodb.com/docs/manual/reference/aggregation-variables/
    head, _, rest = name.partition(".")
    if head == "NOW":
        # The same value for the whole command, on every member: the server's clock.
        return now
    if head == "REMOVE":
        return REMOVE
    if head in ("ROOT", "CURRENT"):
        return get_path(doc, rest) if rest else doc
    raise NotImplementedError(f"variable $${name}")


def _args(arg: Any, doc: Mapping[str, Any], now: _dt.datetime) -> list[Any]:
    return [evaluate(a, doc, now) for a in (arg if isinstance(arg, list) else [arg])]


def _expression(op: str, arg: Any, doc: Mapping[str, Any], now: _dt.datetime) -> Any:
    if op == "$literal":
        return arg
    if op == "$cond":
        # https://www.mongodb.com/docs/manual/reference/operator/aggregation/cond/
        if isinstance(arg, Mapping):
            test, then, other = arg["if"], arg["then"], arg["else"]
        else:
            test, then, other = arg
        return evaluate(then if truthy(evaluate(test, doc, now)) else other, doc, now)
    if op == "$ifNull":
        # https://www.mongodb.com/docs/manual/reference/operator/aggregation/ifNull/
        values = _args(arg, doc, now)
        for value in values[:-1]:
            if value is not None and value is not MISSING:
                return value
        return values[-1]
    values = _args(arg, doc, now)
    if op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp"):
        # Aggregation comparisons use the full BSON order (no type bracketing):
        # https://www.mongodb.com/docs/manual/reference/operator/aggregation/lt/
        c = compare(values[0], values[1])
        return {
            "$eq": c == 0,
            "$ne": c != 0,
            "$gt": c > 0,
            "$gte": c >= 0,
            "$lt": c < 0,
            "$lte": c <= 0,
            "$cmp": c,
        }[op]
    if op == "$and":
        return all(truthy(v) for v in values)
    if op == "$or":
        return any(truthy(v) for v in values)
    if op == "$not":
        return not truthy(values[0])
    if op == "$add":
        return _add(values)
    if op == "$subtract":
        return _subtract(values[0], values[1])
    if op == "$multiply":
        return _multiply(values)
    if op == "$type":
        return _type_name(values[0])
    if op in ("$max", "$min"):
        present = [v for v in values if v is not None and v is not MISSING]
        if not present:
            return None
        best = present[0]
        for v in present[1:]:
            if (compare(v, best) > 0) == (op == "$max") and compare(v, best) != 0:
                best = v
        return best
    raise NotImplementedError(f"aggregation operator {op}")


def _add(values: Sequence[Any]) -> Any:
    """Numbers, and at most one date plus milliseconds (a date):
    https://www.mongodb.com/docs/manual/reference/operator/aggregation/add/"""
    if any(v is None or v is MISSING for v in values):
        return None
    dates = [v for v in values if isinstance(v, _dt.datetime)]
    total = sum(v for v in values if not isinstance(v, _dt.datetime))
    if len(dates) > 1:
        raise ValueError("$add only supports one date")
    if dates:
        return dates[0] + _dt.timedelta(milliseconds=total)
    return total


def _multiply(values: Sequence[Any]) -> Any:
    """Numbers; null if any is null or missing:
    https://www.mongodb.com/docs/manual/reference/operator/aggregation/multiply/"""
    product = 1
    for v in values:
        if v is None or v is MISSING:
            return None
        product *= v
    return product


def _subtract(a: Any, b: Any) -> Any:
    """date - date: milliseconds; date - number: a date (milliseconds earlier):
    https://www.mongodb.com/docs/manual/reference/operator/aggregation/subtract/"""
    if a is None or a is MISSING or b is None or b is MISSING:
        return None
    if isinstance(a, _dt.datetime) and isinstance(b, _dt.datetime):
        return int((_as_utc(a) - _as_utc(b)) / _dt.timedelta(milliseconds=1))
    if isinstance(a, _dt.datetime):
        return a - _dt.timedelta(milliseconds=b)
    return a - b


def _type_name(value: Any) -> str:
    # https://www.mongodb.com/docs/manual/reference/operator/aggregation/type/
    if value is MISSING:
        return "missing"
    names = {1: "null", 3: "string", 4: "object", 5: "array", 6: "binData", 7: "objectId"}
    rank = type_rank(value)
    if rank == 2:
        return "double" if isinstance(value, float) else "int"
    return names.get(rank) or {8: "bool", 9: "date"}[rank]


# --- updates -------------------------------------------------------------------------


def apply_update(
    doc: dict[str, Any], update: Any, now: _dt.datetime, *, inserting: bool = False
) -> dict[str, Any]:
    """`doc` after an update document (operators) or an update pipeline.
    https://www.mongodb.com/docs/manual/reference/operator/update/ and
    https://www.mongodb.com/docs/manual/tutorial/update-with-aggregation-pipeline/"""
    out = clone_doc(doc)
    if isinstance(update, list):
        for stage in update:
            out = _stage(out, stage, now)
        return out
    for op, fields in update.items():
        for path, value in fields.items():
            current = get_path(out, path)
            if op == "$set":
                set_path(out, path, clone(value))
            elif op == "$unset":
                unset_path(out, path)
            elif op == "$setOnInsert":
                # https://www.mongodb.com/docs/manual/reference/operator/update/setOnInsert/
                if inserting:
                    set_path(out, path, clone(value))
            elif op == "$inc":
                # A missing field is created with the increment:
                # https://www.mongodb.com/docs/manual/reference/operator/update/inc/
                set_path(out, path, value if current is MISSING else current + value)
            elif op in ("$max", "$min"):
                # A missing field is set; otherwise replaced only if greater (less):
                # https://www.mongodb.com/docs/manual/reference/operator/update/max/
                if current is MISSING or (
                    (compare(value, current) > 0) == (op == "$max")
                    and (compare(value, current) != 0)
                ):
                    set_path(out, path, value)
            else:
                raise NotImplementedError(f"update operator {op}")
    return out


def upsert_base(flt: Mapping[str, Any]) -> dict[str, Any]:
    """An upsert's new document starts from the filter's equality conditions:
    https://www.mongodb.com/docs/manual/reference/method/db.collection.updateOne/#upsert"""
    base: dict[str, Any] = {}
    for key, cond in flt.items():
        if key.startswith("$"):
            continue
        if not _is_operator_doc(cond):
            set_path(base, key, clone(cond))
        elif "$eq" in cond:
            set_path(base, key, clone(cond["$eq"]))
    return base


# --- aggregation stages ----------------------------------------------------------------


def _stage(doc: dict[str, Any], stage: Mapping[str, Any], now: _dt.datetime) -> dict[str, Any]:
    ((name, spec),) = stage.items()
    if name in ("$set", "$addFields"):
        # https://www.mongodb.com/docs/manual/reference/operator/aggregation/set/ : every
        # expression sees the document as it entered the stage; $$REMOVE removes the field.
        # (Whether a $$REMOVE under a missing parent creates the parent, the manual does
        # not say: here it does not.)
        entering = clone_doc(doc)
        for path, expr in spec.items():
            value = evaluate(expr, entering, now)
            if value is REMOVE or value is MISSING:
                unset_path(doc, path)
            else:
                set_path(doc, path, value)
        return doc
    if name == "$unset":
        # https://www.mongodb.com/docs/manual/reference/operator/aggregation/unset/
        for path in [spec] if isinstance(spec, str) else spec:
            unset_path(doc, path)
        return doc
    if name in ("$replaceWith", "$replaceRoot"):
        target = spec["newRoot"] if name == "$replaceRoot" else spec
        value = evaluate(target, doc, now)
        if not isinstance(value, dict):
            raise ValueError(f"{name} needs a document, got {value!r}")
        return value
    raise NotImplementedError(f"pipeline stage {name}")


def aggregate(
    docs: Sequence[Mapping[str, Any]], pipeline: Sequence[Mapping[str, Any]], now: _dt.datetime
) -> list[dict[str, Any]]:
    """Run $match / $set / $addFields / $unset / $replaceWith stages over `docs`."""
    out = [clone_doc(d) for d in docs]
    for stage in pipeline:
        ((name, spec),) = stage.items()
        if name == "$match":
            out = [d for d in out if matches(d, spec, now)]
        else:
            out = [_stage(d, stage, now) for d in out]
    return out


def project(doc: Mapping[str, Any], projection: Mapping[str, Any] | None) -> dict[str, Any]:
    """Inclusion or exclusion projection of plain fields (`_id` kept unless excluded):
    https://www.mongodb.com/docs/manual/tutorial/project-fields-from-query-results/"""
    out = clone_doc(doc)
    if not projection:
        return out
    fields = {k: v for k, v in projection.items() if k != "_id"}
    if fields and all(truthy(v) for v in fields.values()):
        kept = {k: out[k] for k in fields if k in out}
        if truthy(projection.get("_id", 1)) and "_id" in out:
            kept["_id"] = out["_id"]
        return kept
    for path, flag in projection.items():
        if not truthy(flag):
            unset_path(out, path)
    return out
