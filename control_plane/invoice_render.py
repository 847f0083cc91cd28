"""An issued invoice as people read it: JSON (the API), CSV (a spreadsheet) and PDF (a document to file).

All three read the frozen ``Invoice`` row alone (its ``lines`` JSON and totals), never the charges again,
so a rendering today and in five years shows the same figures. Money is minor units with the currency
and, beside it, the text ``money.Money`` formats ("12.34 EUR"): a program adds integers, a person reads
the text.

PDF library: fpdf2. It is pure Python (no Cairo, no system fonts, nothing to install on an air-gapped
plant's server), maintained and released regularly, and its ``table()`` lays out an invoice's lines in a
few calls; reportlab would do as well but is larger than a one-page document needs. The PDF uses the
built-in Helvetica, which covers Latin-1: other characters (a tenant's name in another script) are shown
as "?" there, while the JSON and CSV keep them.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from fpdf import FPDF
from fpdf.enums import Align
from pydantic import BaseModel, Field

from control_plane.invoices import label, month_text
from control_plane.models import Invoice, Tenant, as_utc
from control_plane.money import Money

LINE_KINDS = "usage, adjustment (an earlier month's late usage), voucher, credits or gap (silent time, not billed)"


class InvoiceLinePublic(BaseModel):
    kind: str = Field(description=f"What the line is: {LINE_KINDS}.")
    period: str = Field(description="The month (YYYY-MM) the usage fell in; empty for voucher and credit lines.")
    description: str = Field(description="The line as a person reads it.")
    slice: str = Field(default="", description="The slice's slug, for usage, adjustment and gap lines.")
    product: str = Field(default="", description="The product's SKU, for usage and adjustment lines.")
    measure: str = Field(default="", description="reserved, burst, bank, verdicts, overage or subscription_fee.")
    quantity: int = Field(default=0, description="How much, in ``unit``.")
    unit: str = Field(default="", description="replica-second, verdict, month or silent second.")
    unit_price: str = Field(default="", description="Price in major units (a decimal), per ``price_per``.")
    price_per: str = Field(default="", description="What the unit price is for, e.g. replica-hour.")
    amount_minor: int = Field(description="Minor units (cents); vouchers and credits are negative.")
    amount: str = Field(description="The amount as text, with its currency.")


class InvoicePublic(BaseModel):
    id: int = Field(description="The invoice's id in the API.")
    number: int = Field(description="Gapless across the installation, in issue order.")
    label: str = Field(description="The number as quoted on documents, e.g. INV-000042.")
    tenant_id: int = Field(description="The tenant billed.")
    tenant: str = Field(description="The tenant's name.")
    period: str = Field(description="The month invoiced, YYYY-MM.")
    currency: str = Field(description="ISO 4217 code of every amount.")
    issued_at: datetime = Field(description="When the month was closed (UTC).")
    lines: list[InvoiceLinePublic] = Field(description="Usage and adjustment lines, then vouchers, credits, gaps.")
    subtotal_minor: int = Field(description="Usage and adjustments, minor units.")
    voucher_minor: int = Field(description="Paid by vouchers, minor units.")
    credits_minor: int = Field(description="Paid by bank credits, minor units.")
    total_minor: int = Field(description="Due: subtotal - vouchers - credits, minor units.")
    subtotal: str = Field(description="The subtotal as text.")
    vouchers: str = Field(description="Paid by vouchers, as text.")
    credits: str = Field(description="Paid by bank credits, as text.")
    total: str = Field(description="Total due, as text.")


def public(invoice: Invoice, tenant: Tenant) -> InvoicePublic:
    assert invoice.id is not None
    text = lambda minor: str(Money(minor, invoice.currency))  # noqa: E731
    fields = InvoiceLinePublic.model_fields
    lines = [
        InvoiceLinePublic(**{k: v for k, v in line.items() if k in fields}, amount=text(line["amount_minor"]))
        for line in invoice.lines
    ]
    return InvoicePublic(
        id=invoice.id,
        number=invoice.number,
        label=label(invoice.number),
        tenant_id=invoice.tenant_id,
        tenant=tenant.name,
        period=month_text(invoice.period),
        currency=invoice.currency,
        issued_at=as_utc(invoice.issued_at),
        lines=lines,
        subtotal_minor=invoice.subtotal_minor,
        voucher_minor=invoice.voucher_minor,
        credits_minor=invoice.credits_minor,
        total_minor=invoice.total_minor,
        subtotal=text(invoice.subtotal_minor),
        vouchers=text(-invoice.voucher_minor),
        credits=text(-invoice.credits_minor),
        total=text(invoice.total_minor),
    )


CSV_COLUMNS = ("kind", "period", "description", "slice", "product", "measure", "quantity", "unit", "unit_price",
               "price_per", "amount_minor", "amount")  # fmt: skip


def to_csv(doc: InvoicePublic) -> str:
    """One row per line, then a row per total (kind ``subtotal``, ``vouchers``, ``credits``, ``total``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*CSV_COLUMNS, "currency", "invoice"])
    for line in doc.lines:
        writer.writerow([*(_cell(line, column) for column in CSV_COLUMNS), doc.currency, doc.label])
    for kind, minor, text in _totals(doc):
        row: dict[str, Any] = {"kind": kind, "period": doc.period, "amount_minor": minor, "amount": text}
        writer.writerow([*(row.get(column, "") for column in CSV_COLUMNS), doc.currency, doc.label])
    return out.getvalue()


FREE_TEXT = ("description", "slice", "product")


def _cell(line: InvoiceLinePublic, column: str) -> object:
    """Names people typed that a spreadsheet would run as a formula (=, +, -, @) get a leading '."""
    value = getattr(line, column)
    if column == "quantity" and not line.unit:
        return ""  # voucher and credit lines count no units
    if column in FREE_TEXT and isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _totals(doc: InvoicePublic) -> list[tuple[str, int, str]]:
    return [
        ("subtotal", doc.subtotal_minor, doc.subtotal),
        ("vouchers", -doc.voucher_minor, doc.vouchers),
        ("credits", -doc.credits_minor, doc.credits),
        ("total", doc.total_minor, doc.total),
    ]


def to_pdf(doc: InvoicePublic) -> bytes:
    """A one-document invoice: header, a table of lines, the totals."""
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_title(_latin1(f"Invoice {doc.label}"))
    pdf.set_creator("Lineside control plane")
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=16)
    pdf.cell(0, 10, _latin1(f"Invoice {doc.label}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for text in (
        f"Billed to: {doc.tenant} (tenant {doc.tenant_id})",
        f"Period: {doc.period}",
        f"Issued: {doc.issued_at:%Y-%m-%d %H:%M} UTC",
        f"Currency: {doc.currency}",
    ):
        pdf.cell(0, 6, _latin1(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", size=8)
    with pdf.table(col_widths=(16, 14, 70, 26, 20, 34), text_align=("LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT"),
                   first_row_as_headings=True) as table:  # fmt: skip
        table.row(["Kind", "Month", "Description", "Quantity", "Unit price", "Amount"])
        for line in doc.lines:
            quantity = f"{line.quantity:,} {line.unit}" if line.unit else ""
            price = f"{line.unit_price} / {line.price_per}" if line.price_per else ""
            table.row([_latin1(x) for x in (line.kind, line.period, line.description, quantity, price, line.amount)])
    pdf.ln(4)
    for kind, _, text in _totals(doc):
        pdf.set_font("Helvetica", style="B" if kind == "total" else "", size=11 if kind == "total" else 10)
        caption = "Total due" if kind == "total" else kind.capitalize()
        pdf.cell(150, 7, caption, align=Align.R)
        pdf.cell(0, 7, _latin1(text), align=Align.R, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")
