"""Sending a message to the configured notification targets (A1, A2).

``send_notice`` is a plain coroutine, for flow hooks (which run after their flow ended, where
no task should start); ``send_notification`` is the same as a task, for flows (the daily
summary). Neither raises: a target that cannot be reached is reported in the Delivery list,
and the caller logs it. The message is scrubbed of the targets' own secrets before it leaves.
"""

from __future__ import annotations

import asyncio
import logging

from dapx.blocks.notifications import Notifications, aload_notifications
from dapx.core.notify import scrub, secret_parts
from dapx.tasks.base import dapx_task
from dapx.transports.notify import Delivery

MESSAGE_SECRET_MIN = 8
"""Pieces of a target URL this long (passwords, tokens, header values) are scrubbed from
message text as a last guard; shorter ones (a user name like ``dapx``) would garble it."""


def _guard(block: Notifications, text: str) -> str:
    secrets = [p for url in block.urls().values() for p in secret_parts(url)
               if len(p) >= MESSAGE_SECRET_MIN and "://" not in p]
    return scrub(text, secrets)


async def send_notice(title: str, body: str) -> list[Delivery]:
    """Send to every target of the ``Notifications`` block; [] when there is no block or
    no target. Runs Apprise (blocking I/O) in a worker thread."""
    block = await aload_notifications()
    if block is None or not block.urls():
        return []
    return await asyncio.to_thread(block.send, _guard(block, title), _guard(block, body))


send_notification = dapx_task(name="send-notification", retries=0)(send_notice)
"""``send_notice`` as a task (Apprise retries nothing; a summary is not sent twice)."""


def log_deliveries(logger: logging.Logger | logging.LoggerAdapter, what: str,
                   deliveries: list[Delivery]) -> None:
    """One line per target: sent, or not sent and why (never the URL)."""
    if not deliveries:
        logger.info("%s: no notification targets configured (`dapx notify add`)", what)
    for delivery in deliveries:
        if delivery.sent:
            logger.info("%s: notification sent to %s", what, delivery.target)
        else:
            logger.warning("%s: notification to %s NOT sent: %s", what, delivery.target,
                           delivery.reason)
