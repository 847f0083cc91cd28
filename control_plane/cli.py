"""``lineside control-plane``: serve the control plane's API, dashboard and metrics.

``lineside billing close --month YYYY-MM`` closes a month's invoices by hand.

``lineside.cli`` mounts this app as it is; ``python -m control_plane.cli control-plane`` runs the same command.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("control-plane")
def control_plane(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
) -> None:
    """Serve the control plane API (OpenAPI docs at /docs, metrics at /metrics).

    Settings come from LINESIDE_* variables: LINESIDE_DATA_DIR (SQLite file and model store),
    LINESIDE_DATABASE_URL (PostgreSQL), LINESIDE_SECRET_KEY, LINESIDE_BOOTSTRAP_TOKEN,
    LINESIDE_TRUSTED_PROXIES (reverse proxies whose X-Forwarded-For/-Proto are believed),
    LINESIDE_COOKIE_SECURE (HTTPS-only session cookie and HSTS; on with LINESIDE_PRODUCTION=1).
    """
    import uvicorn

    from control_plane.app import create_app
    from control_plane.settings import get_settings

    settings = get_settings()
    # Forwarded headers (client address, https) are believed only from LINESIDE_TRUSTED_PROXIES.
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", **settings.proxy_options())


billing = typer.Typer(no_args_is_help=True, help="Invoices: close a month by hand.")
app.add_typer(billing, name="billing")


@billing.command("close")
def close_month(
    month: Annotated[str, typer.Option("--month", help="The month to close, YYYY-MM; it must be over (UTC).")],
) -> None:
    """Close a month's invoices for every tenant now, as the control plane does on the 1st by itself.

    Reads the database from the same LINESIDE_* settings as ``lineside control-plane``; closing a
    closed month issues nothing.
    """
    from sqlmodel import Session

    from control_plane import db, invoices
    from control_plane.errors import ControlPlaneError
    from control_plane.models import utcnow
    from control_plane.money import Money
    from control_plane.settings import get_settings

    engine = db.make_engine(get_settings().url)
    try:
        db.migrate(engine)
        with Session(engine) as session:
            issued = invoices.close_month(session, invoices.period_of(month), utcnow())
            session.commit()
            for invoice in issued:
                total = Money(invoice.total_minor, invoice.currency)
                typer.echo(f"{invoices.label(invoice.number)}  tenant {invoice.tenant_id}  {month}  total {total}")
    except ControlPlaneError as e:
        typer.echo(e.message, err=True)
        raise typer.Exit(2) from e
    finally:
        engine.dispose()
    if not issued:
        typer.echo(f"{month}: no invoice issued (closed already, or nothing was charged)")


if __name__ == "__main__":  # python -m control_plane.cli control-plane ...
    # As a group, as lineside mounts it: Typer would run a lone command without its name.
    typer.main.get_group(app)()
