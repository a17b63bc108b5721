"""A release task: runs on each new version before it becomes current."""

from tasks._shared import APP_NAME

description = "Migrate the database (pretend)"


def run(payload, ctx):
    print(f"migrating {APP_NAME} for {ctx.environment}")
    return {"migrated": True}
