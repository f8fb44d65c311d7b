"""Annotated pydantic types built on ``dapx.core.validate``, for flow parameters and models.

A model field typed ``Vmid`` or ``PoolName`` is checked when the model is built, so Prefect
forms and ``dapx job create`` refuse bad input before a run starts. Pydantic only turns
ValueError into a ValidationError, so each validator's InputError is re-raised as ValueError
with the same one-line message.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

from dapx.core import cron, validate
from dapx.errors import InputError


def _as_value_error(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a validator so pydantic reports its InputError as a field error."""
    def run(value: Any) -> Any:
        try:
            return check(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None
    run.__name__ = check.__name__
    return run


PoolName = Annotated[str, AfterValidator(_as_value_error(validate.validate_pool_name)),
                     Field(examples=["rpool"])]
DatasetName = Annotated[str, AfterValidator(_as_value_error(validate.validate_dataset_name)),
                        Field(examples=["rpool/data"])]
SubFolder = Annotated[str, AfterValidator(_as_value_error(validate.validate_subfolder)),
                      Field(examples=["replica"])]
SnapshotName = Annotated[str, AfterValidator(_as_value_error(validate.validate_snapshot_name)),
                         Field(examples=["dapx_pve3-100_20250101T000000Z"])]
# Vmid and NodeName also carry their rule in the JSON schema (minimum/maximum, pattern), so
# Prefect's parameter schema holds it: the UI form and the server refuse a bad value when a
# run is created, before any worker starts it.
# (json_schema_extra, not ge/pattern: our validators keep their one-line messages in Python).
Vmid = Annotated[int, BeforeValidator(_as_value_error(validate.validate_vmid)),
                 Field(examples=[100], json_schema_extra={"minimum": validate.VMID_MIN,
                                                          "maximum": validate.VMID_MAX})]
NodeName = Annotated[str, AfterValidator(_as_value_error(validate.validate_node_name)),
                     Field(examples=["pve1"],
                           json_schema_extra={"pattern": validate.NODE_NAME_PATTERN})]
Host = Annotated[str, AfterValidator(_as_value_error(validate.validate_host)),
                 Field(examples=["198.18.213.13"])]
BridgeName = Annotated[str, AfterValidator(_as_value_error(validate.validate_bridge_name)),
                       Field(examples=["vmbr0"])]
StorageId = Annotated[str, AfterValidator(_as_value_error(validate.validate_storage_id)),
                      Field(examples=["local-zfs"])]
Bandwidth = Annotated[str, AfterValidator(_as_value_error(validate.parse_bandwidth)),
                      Field(examples=["10M"])]
AbsPath = Annotated[str, AfterValidator(_as_value_error(validate.validate_abs_path)),
                    Field(examples=["/root/.ssh/dapx_replication"])]
CronLine = Annotated[str, AfterValidator(_as_value_error(cron.validate_cron)),
                     Field(examples=["*/15 * * * *"])]
CarryKey = Annotated[str, AfterValidator(_as_value_error(validate.validate_config_key)),
                     Field(examples=["hostpci0"])]
Keep = Annotated[int, AfterValidator(_as_value_error(validate.validate_keep)),
                 Field(examples=[3])]


def validation_message(exc: ValidationError) -> str:
    """The first error of a pydantic ValidationError as one line: ``field: what is wrong``."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ()))
    msg = first["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg
