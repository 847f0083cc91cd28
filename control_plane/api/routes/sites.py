"""Sites (``/sites``): one Ray cluster and one broker each, with their join tokens. Operators provision;
a tenant's edge operators issue join tokens for nodes their tenant will own, on a site the operator runs.

The nodes that joined a site are under ``/nodes``; capacity that no longer fits on a site under ``/alerts``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import select

from control_plane import broker_sync, catalogue, overflow, placement
from control_plane.api.deps import IdPath, NowDep, PageDep, SessionDep, SettingsDep, allowed, get_or_404, insert
from control_plane.errors import InvalidInput, NotFound
from control_plane.models import (
    MAX_ID,
    BrokerAdmin,
    JoinToken,
    JoinTokenIssued,
    Site,
    SiteCreate,
    SiteLink,
    SiteLinkPin,
    SiteLinkPublic,
    SitePublic,
    SiteWan,
    Tenant,
    utcnow,
)
from control_plane.security import Permission, Principal, new_token, token_hash
from control_plane.sites import broker_admin_password, sync_broker

router = APIRouter(prefix="/sites", tags=["sites"])


@router.post("", response_model=SitePublic, status_code=201)
def create_site(
    body: SiteCreate,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SITES, "creating sites")],
    now: NowDep,
) -> Site:
    """A site and its standard replica product (priced from the settings; reprice it in the catalogue)."""
    site = insert(session, Site(**body.model_dump()), conflict=f"site {body.name!r} already exists")
    catalogue.seed_site_product(session, site, settings, now.astimezone(UTC).date())
    session.commit()
    session.refresh(site)
    return site


@router.get("", response_model=list[SitePublic])
def list_sites(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SITES, "listing sites")],
    page: PageDep,
) -> list[Site]:
    """Every role sees site names and brokers (lines are placed on a site); by id, paged (X-Next-Cursor)."""
    return page.of(session, select(Site), Site)


@router.get("/{site_id}", response_model=SitePublic)
def get_site(
    site_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SITES, "reading sites")],
) -> Site:
    return get_or_404(session, Site, site_id)


@router.patch("/{site_id}", response_model=SitePublic)
def update_site(
    site_id: IdPath,
    body: SiteWan,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SITES, "changing sites")],
    now: NowDep,
) -> Site:
    """The site's region and the address other sites reach its broker at (cross-site overflow)."""
    site = get_or_404(session, Site, site_id)
    for name, value in body.model_dump(exclude_unset=True).items():
        setattr(site, name, value)
    session.commit()
    placement.place_all(session, now)  # a region changed: which slices may overflow where
    session.refresh(site)
    return site


def _link_public(link: SiteLink, now: datetime) -> SiteLinkPublic:
    return SiteLinkPublic(**link.model_dump(), rtt_ms=overflow.effective_rtt(link, now))


@router.get("/{site_id}/links", response_model=list[SiteLinkPublic])
def list_links(
    site_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SITES, "reading round trips between sites")],
    now: NowDep,
    page: PageDep,
) -> list[SiteLinkPublic]:
    """Round trips from this site to other sites' brokers (measured by its head agent, or pinned), by the other
    site's id, a page at a time (X-Next-Cursor)."""
    get_or_404(session, Site, site_id)
    links = page.of(session, select(SiteLink).where(SiteLink.site_id == site_id), SiteLink, key="peer_site_id")
    return [_link_public(link, now) for link in links]


@router.put("/{site_id}/links/{peer_id}", response_model=SiteLinkPublic)
def pin_link(
    site_id: IdPath,
    peer_id: IdPath,
    body: SiteLinkPin,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SITES, "pinning round trips between sites")],
    now: NowDep,
) -> SiteLinkPublic:
    """Pin the round trip from this site to another's broker (null: the agents' measurements again)."""
    get_or_404(session, Site, site_id)
    get_or_404(session, Site, peer_id)
    if site_id == peer_id:
        raise InvalidInput("a site has no link to itself; name another site")
    link = session.get(SiteLink, (site_id, peer_id)) or SiteLink(site_id=site_id, peer_site_id=peer_id)
    link.pinned_rtt_ms = body.rtt_ms
    session.add(link)
    session.commit()
    overflow.place(session, now)
    session.refresh(link)
    return _link_public(link, now)


@router.get("/{site_id}/broker-admin", response_model=BrokerAdmin)
def get_broker_admin(
    site_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SITES, "reading broker admin credentials")],
) -> BrokerAdmin:
    """The dynamic-security admin the site's Mosquitto must have (``lineside broker run`` sets it up)."""
    site = get_or_404(session, Site, site_id)
    return BrokerAdmin(username=broker_sync.ADMIN_USERNAME, password=broker_admin_password(settings, site))


@router.post("/{site_id}/broker/sync")
def sync_site_broker(
    site_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_SITES, "syncing a broker")],
) -> dict[str, int]:
    """Make the site's broker hold exactly the active robots and slices (e.g. after a broker rebuild)."""
    return sync_broker(session, settings, get_or_404(session, Site, site_id))


OwnerQuery = Annotated[
    int | None,
    Query(ge=1, le=MAX_ID, description="The tenant that will own the node (operators; default: the operator). "
          "An edge operator's tokens always join nodes its own tenant owns."),
]  # fmt: skip


@router.post("/{site_id}/join-tokens", response_model=JoinTokenIssued, status_code=201)
def create_join_token(
    site_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.LEND_NODES, "creating join tokens")],
    owner_tenant_id: OwnerQuery = None,
) -> JoinTokenIssued:
    """A one-time token for ``lineside edge-node join``; shown once. The node it joins belongs to the token's
    owner: the operator, or a tenant (an edge operator's own tenant, or the one an operator names)."""
    get_or_404(session, Site, site_id)
    if caller.is_operator:
        owner = owner_tenant_id
        if owner is not None:
            get_or_404(session, Tenant, owner)
    elif owner_tenant_id not in (None, caller.tenant_id):
        raise NotFound(f"tenant {owner_tenant_id} not found")
    else:
        owner = caller.tenant_id
    token = new_token("join")
    expires = utcnow() + timedelta(seconds=settings.join_token_ttl_s)
    session.add(JoinToken(site_id=site_id, owner_tenant_id=owner, token_hash=token_hash(token), expires_at=expires))
    session.commit()
    return JoinTokenIssued(site_id=site_id, owner_tenant_id=owner, token=token, expires_at=expires)
