"""An async task with a time limit."""

import asyncio

description = "Build a report"
max_duration = 10.0


async def run(payload, ctx):
    await asyncio.sleep(0.05)
    return {"rows": 3, "branch": ctx.branch}
