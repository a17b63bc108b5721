"""Greets someone. Edit GREETING, push, and watch a new version serve it."""

description = "Say hello"
input_schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "additionalProperties": False,
}

GREETING = "Hello"


def run(payload, ctx):
    name = (payload or {}).get("name", "world")
    print(f"greeting {name} from {ctx.environment} ({ctx.version})")
    return {"message": f"{GREETING}, {name}!", "version": ctx.version}
