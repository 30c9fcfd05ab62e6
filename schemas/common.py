"""Schemas shared by every resource: problems, jobs and their typed results."""

from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, pre_load, validate


class ProblemSchema(Schema):
    """RFC 9457 problem details, as every error is sent."""

    class Meta:
        unknown = INCLUDE  # extension members (queue, violations, retry_after, …) are allowed

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    errors = fields.Dict(metadata={"description": "validation messages keyed by field"})
    rule = fields.String(metadata={"description": "the policy rule a request broke"})
    host = fields.String(allow_none=True)


class ProgressSchema(Schema):
    done = fields.Integer(allow_none=True)
    total = fields.Integer(allow_none=True)
    unit = fields.String()
    message = fields.String()


class JobResult(fields.Nested):
    """A job's ``result``: documented as its schema, sent exactly as the task stored it.

    Dumping through the nested schema would drop any member it does not declare; the answer
    is the record as the worker wrote it, so the schema only describes it.
    """

    def __init__(self, schema: type[Schema], **kwargs: Any) -> None:
        super().__init__(schema, allow_none=True, metadata={
            "description": "what the operation produced; null until it has finished"}, **kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class JobSchema(Schema):
    """A job: every operation's handle (its ``result`` is typed per operation, see ``job_of``)."""

    id = fields.String(required=True)
    kind = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(
        ["queued", "running", "succeeded", "failed", "cancelled"]))
    host = fields.String(allow_none=True)
    target = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema, allow_none=True)
    result = fields.Raw(allow_none=True)
    # Dumped as stored: a problem may carry more members (violations, partial output, …)
    # than the Problem schema declares, and dumping through it would drop them.
    error = fields.Dict(allow_none=True, metadata={
        "description": "a Problem (RFC 9457) with any extra members the operation added"})
    parent = fields.String(allow_none=True, metadata={"description": "fan-out parent job"})
    children = fields.List(fields.String(), allow_none=True,
                           metadata={"description": "fan-out child jobs"})
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    requested_by = fields.String(allow_none=True)
    cancel_requested = fields.Boolean()
    links = fields.Dict(keys=fields.String(), values=fields.String())

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        # A DumpedJob (api.services) is already this schema's output for the job just
        # written (tests/unit/test_dumped_job.py): the schema pass is skipped for it.
        if type(obj).__name__ == "DumpedJob" and not (self.many if many is None else many):
            return obj
        return super().dump(obj, many=many)


LABEL_NOT_DESCRIPTION = ("`label!=…`: only what does not carry these labels (`label!` is still "
                         "accepted as an older spelling of this key)")


class PruneFiltersSchema(Schema):
    """Prune filters; ``label_not`` is Docker's ``label!``, a name clients can generate."""

    @pre_load
    def accept_docker_spelling(self, data: Any, **_: Any) -> Any:
        if not isinstance(data, dict) or "label!" not in data:
            return data
        if "label_not" in data:
            raise ValidationError("give label_not or label!, not both", "label_not")
        return {("label_not" if key == "label!" else key): value for key, value in data.items()}


class FullMatch(validate.Regexp):
    """A pattern the whole value must match (``Regexp`` lets ``$`` match before a newline)."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def job_of(result: type[Schema], name: str) -> type[JobSchema]:
    """The job an operation answers with, its ``result`` documented as ``result``.

    ``name`` ends in ``JobSchema`` (``ProvisionJobSchema``): the OpenAPI component is named
    after it, so a generated client gets one job model per kind of result.
    """
    return type(name, (JobSchema,), {
        "__doc__": f"A job whose result, once it succeeded, is a {result.__name__[:-6]}.",
        "__module__": result.__module__, "result": JobResult(result)})
