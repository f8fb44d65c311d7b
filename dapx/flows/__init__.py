"""One module per operation; every flow is an importable function with typed parameters.

``KEPT_RESULTS`` goes into every flow decorator: a run's result (the pydantic model it
returns) is persisted, as JSON, in Prefect's result storage (local files under the Prefect
home unless PREFECT_LOCAL_STORAGE_PATH or PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK say
otherwise), so ``flow_run.state.result()`` reads what a run did long after it ended, from any
process that can reach that storage. JSON rather than pickle: reading a result never runs code.
"""

KEPT_RESULTS = {"persist_result": True, "result_serializer": "json"}


def _quiet_user_errors() -> None:
    from dapx.ui_extensions.logs import quiet_user_errors

    quiet_user_errors()


_quiet_user_errors()  # a flow run's log shows a DapxError as its one line, not a traceback
