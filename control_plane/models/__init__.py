"""Tables and API schemas of the control plane, one module per area; import them from here.

Each entity is layered as in full-stack-fastapi-template: ``XCreate`` (what a caller may send: never
``tenant_id``, ``status`` or other server-owned fields; unknown fields are refused), ``X(table=True)``,
``XPublic`` (what is returned). A body that breaks a bound, or a rule between its fields, fails in its
model's validators, so the caller gets a 422 quoting the bad values; 409 is kept for conflicts with what
is stored (duplicates, illegal state changes).

Why a package and not one ``models.py``: one file per area stays readable as billing and the compute
bank add tables, and a change to slices is not a change to accounts. This package still registers
every table on ``SQLModel.metadata`` when imported (Alembic's env does), and every name is re-exported
here, so ``from control_plane.models import Slice`` works as before:

    _common     the strict input base, bounded body ids, UTC times, validators several areas share
    accounts    tenants, users and roles, API tokens, logins
    sites       sites, join tokens, edge nodes, the compute bank's lending windows
    lines       production lines (with their robots' frame policy) and robots
    slices      model versions and slices: the slice knobs, written once, from contracts.slice_spec
    capacity    order plans, model profiles, scale events
    telemetry   verdicts per line and minute, failed parts
    ledger      the double-entry ledger: accounts, journal transactions, entries
    usage       metered usage records (capacity and verdicts), unique by idempotency key
    billing     products, price versions, leases, charges, budgets, voucher programmes, invoices
    bank        the compute bank's rule per site (contributors' share) and the credits they earned
    rollouts    a slice's move to a new model version (shadow, canary, full) and its figures
    fits        anomaly models fitted from a tenant's good photos, as Ray jobs on its site
"""

from __future__ import annotations

from control_plane.models._common import (
    MAX_ID,
    RowId,
    as_utc,
    utcnow,
)
from control_plane.models.accounts import (
    MAX_TOKEN_DAYS,
    ApiToken,
    Login,
    PasswordSet,
    Role,
    Tenant,
    TenantCreate,
    TenantPublic,
    TokenCreate,
    TokenIssued,
    TokenPublic,
    User,
    UserCreate,
    UserPublic,
    UserWithToken,
)
from control_plane.models.bank import (
    BankCredit,
    BankRule,
    BankRuleIn,
    BankRulePublic,
    PayoutIn,
    SettleAs,
)
from control_plane.models.billing import (
    BudgetAlert,
    BudgetIn,
    Charge,
    ChargedUsage,
    CreditLimitIn,
    Invoice,
    InvoicedCharge,
    Lease,
    LeaseBuy,
    PriceCreate,
    Product,
    ProductCreate,
    ProductPrice,
    QuoteIn,
    TenantBilling,
    TopUpIn,
    Voucher,
    VoucherProgramme,
)
from control_plane.models.capacity import (
    ModelProfile,
    ModelProfilePublic,
    OrderPlan,
    OrderPlanIn,
    ScaleEvent,
    ScaleEventPublic,
    ScaleKind,
    ShiftIn,
    VolumeIn,
)
from control_plane.models.fits import FitCreate, FitStatus, ModelFit, ModelFitPublic
from control_plane.models.ledger import Account, JournalEntry, JournalTransaction
from control_plane.models.lines import (
    ROBOT_MAX_FPS_HELP,
    ROBOT_MAX_FRAME_BYTES_HELP,
    Line,
    LineCreate,
    LinePublic,
    LineUpdate,
    LineWatcher,
    Robot,
    RobotCreate,
    RobotCredentials,
    RobotPublic,
)
from control_plane.models.rollouts import Rollout, RolloutCreate, RolloutPublic, RolloutState
from control_plane.models.sites import (
    OPERATOR_NODE_STATUSES,
    BrokerAdmin,
    JoinToken,
    JoinTokenIssued,
    Node,
    NodeContribution,
    NodeJoined,
    NodePublic,
    NodeStatusChange,
    Site,
    SiteCreate,
    SiteLink,
    SiteLinkPin,
    SiteLinkPublic,
    SitePublic,
    SiteWan,
    WindowIn,
)
from control_plane.models.slices import (
    ModelVersion,
    ModelVersionPublic,
    Slice,
    SliceCreate,
    SliceKnobs,
    SliceOverflow,
    SlicePublic,
    SliceScale,
)
from control_plane.models.telemetry import (
    FailedPart,
    FailedPartPublic,
    LineMinute,
)
from control_plane.models.usage import UsageRecord

__all__ = [
    "MAX_ID",
    "MAX_TOKEN_DAYS",
    "OPERATOR_NODE_STATUSES",
    "ROBOT_MAX_FPS_HELP",
    "ROBOT_MAX_FRAME_BYTES_HELP",
    "Account",
    "ApiToken",
    "BankCredit",
    "BankRule",
    "BankRuleIn",
    "BankRulePublic",
    "BrokerAdmin",
    "BudgetAlert",
    "BudgetIn",
    "Charge",
    "ChargedUsage",
    "CreditLimitIn",
    "FailedPart",
    "FailedPartPublic",
    "FitCreate",
    "FitStatus",
    "Invoice",
    "InvoicedCharge",
    "JoinToken",
    "JoinTokenIssued",
    "JournalEntry",
    "JournalTransaction",
    "Lease",
    "LeaseBuy",
    "Line",
    "LineCreate",
    "LineMinute",
    "LinePublic",
    "LineUpdate",
    "LineWatcher",
    "Login",
    "ModelFit",
    "ModelFitPublic",
    "ModelProfile",
    "ModelProfilePublic",
    "ModelVersion",
    "ModelVersionPublic",
    "Node",
    "NodeContribution",
    "NodeJoined",
    "NodePublic",
    "NodeStatusChange",
    "OrderPlan",
    "OrderPlanIn",
    "PasswordSet",
    "PayoutIn",
    "PriceCreate",
    "Product",
    "ProductCreate",
    "ProductPrice",
    "QuoteIn",
    "Robot",
    "RobotCreate",
    "RobotCredentials",
    "RobotPublic",
    "Role",
    "Rollout",
    "RolloutCreate",
    "RolloutPublic",
    "RolloutState",
    "RowId",
    "ScaleEvent",
    "ScaleEventPublic",
    "ScaleKind",
    "SettleAs",
    "ShiftIn",
    "Site",
    "SiteCreate",
    "SiteLink",
    "SiteLinkPin",
    "SiteLinkPublic",
    "SitePublic",
    "SiteWan",
    "Slice",
    "SliceCreate",
    "SliceKnobs",
    "SliceOverflow",
    "SlicePublic",
    "SliceScale",
    "Tenant",
    "TenantBilling",
    "TenantCreate",
    "TenantPublic",
    "TokenCreate",
    "TokenIssued",
    "TokenPublic",
    "TopUpIn",
    "UsageRecord",
    "User",
    "UserCreate",
    "UserPublic",
    "UserWithToken",
    "VolumeIn",
    "Voucher",
    "VoucherProgramme",
    "WindowIn",
    "as_utc",
    "utcnow",
]
