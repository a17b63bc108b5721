"""Not a task (leading underscore): shared code for the tasks."""

APP_NAME = "demo-app"
