"""Waitlist domain commands: `bullwait prefs`."""

from __future__ import annotations

import typer

from bullwait.cli.common import AsJson, RedisUrl, context_line, fail, print_json, run_async, settings_from
from bullwait.cli.render import print_table
from bullwait.settings import Settings

DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def register(app: typer.Typer) -> None:
    app.command(name="prefs")(prefs)


def prefs(
    customer_id: str = typer.Argument(..., help="The customer whose preferences to show."),
    as_json: bool = AsJson,
    redis_url: str | None = RedisUrl,
) -> None:
    """Show a customer's booking preferences (top service and master, preferred days and hours).

    Example: bullwait prefs cust-42 --json
    """
    if not customer_id.strip():
        raise fail("CUSTOMER_ID must not be empty; pass the id your bookings use, e.g. bullwait prefs cust-42", 2)
    settings = settings_from(redis_url)
    data = run_async(lambda: _prefs(settings, customer_id.strip()))
    if as_json:
        print_json(data)
        return
    typer.echo(context_line(settings, settings.bullwait_store_prefix))
    if not data["bookings"]:
        typer.echo(
            f"no bookings recorded for customer {customer_id!r} (store prefix {settings.bullwait_store_prefix!r})"
        )
        return
    counts = data["counts"]
    rows = [
        {"preference": "bookings", "value": str(data["bookings"])},
        {"preference": "top service", "value": f"{data['topService']} ({counts['services'][data['topService']]})"},
        {"preference": "top master", "value": f"{data['topMaster']} ({counts['masters'][data['topMaster']]})"},
        {
            "preference": "preferred days",
            "value": ", ".join(f"{DAYS[d]} ({counts['days'][str(d)]})" for d in data["preferredDays"]),
        },
        {
            "preference": "preferred hours",
            "value": ", ".join(f"{h:02d}:00 ({counts['hours'][str(h)]})" for h in data["preferredHours"]),
        },
    ]
    print_table(rows, title=f"preferences of {customer_id}")


async def _prefs(settings: Settings, customer_id: str) -> dict:  # type: ignore[type-arg]
    from bullwait.engine.connection import check_redis, redis_client
    from bullwait.waitlist.store import RedisWaitlistStore

    await check_redis(settings)
    store = RedisWaitlistStore(redis_client(settings), settings.bullwait_store_prefix)
    try:
        return (await store.preferences(customer_id)).to_dict()
    finally:
        await store.close()
