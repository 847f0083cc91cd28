"""Robots: factory IT registers them and gets MQTT credentials; rotate and revoke.

Every change is confirmed by the site's broker before it is committed, so a
password we hand out always works and a revoked robot is disconnected now.
"""

from __future__ import annotations

import shlex
from typing import Annotated

from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from contracts import wire
from control_plane import broker_sync, sites
from control_plane.api.deps import (
    IdFilter,
    IdPath,
    PageDep,
    SessionDep,
    SettingsDep,
    allowed,
    own_tenant,
    scoped_get,
)
from control_plane.errors import Conflict
from control_plane.models import Line, Robot, RobotCreate, RobotCredentials, RobotPublic, Site, Tenant
from control_plane.security import Permission, Principal
from control_plane.settings import ControlPlaneSettings
from control_plane.states import RobotStatus, transition

router = APIRouter(prefix="/robots", tags=["robots"])


def _credentials(session: Session, settings: ControlPlaneSettings, robot: Robot) -> RobotCredentials:
    line = session.get(Line, robot.line_id)
    tenant = session.get(Tenant, robot.tenant_id)
    assert line is not None
    assert tenant is not None
    site = session.get(Site, line.site_id)
    assert site is not None
    password = sites.robot_password(settings, robot)
    watcher = broker_sync.watcher_username(tenant.slug, line.slug, robot.slug)
    watcher_password = sites.watcher_password(settings, robot)
    topics = {k.value: wire.topic(tenant.slug, line.slug, robot.slug, k) for k in wire.TopicKind}
    server = f"-h {site.broker_host} -p {site.broker_port} -V mqttv5"
    # The broker pins each client id to its username: the robot publishes, its watcher subscribes.
    examples = {
        "mosquitto_sub": f"mosquitto_sub {server} -u {watcher} -P {shlex.quote(watcher_password)} -i {watcher} "
        f"-q 1 -t {topics['results']} -t {topics['errors']} -v",
        "mosquitto_pub": f"mosquitto_pub {server} -u {robot.mqtt_username} -P {shlex.quote(password)} "
        f"-i {robot.mqtt_username} -q 1 -t {topics['frames']} -f part.jpg",
        "python": (
            "from robots.sdk import RobotClient\n"
            f"robot = RobotClient({site.broker_host!r}, {site.broker_port}, tenant={tenant.slug!r}, "
            f"line={line.slug!r}, robot={robot.slug!r}, username={robot.mqtt_username!r}, "
            f"password={password!r}, client_id={robot.mqtt_username!r}).connect()\n"
            "print(robot.inspect(open('part.jpg', 'rb').read()).model_dump_json())"
        ),
    }
    return RobotCredentials(
        **RobotPublic.model_validate(robot).model_dump(), mqtt_password=password, client_id=robot.mqtt_username,
        watch_username=watcher, watch_password=watcher_password,
        broker_host=site.broker_host, broker_port=site.broker_port, topics=topics, examples=examples,
    )  # fmt: skip


def _site_of(session: Session, robot: Robot) -> Site:
    line = session.get(Line, robot.line_id)
    assert line is not None
    site = session.get(Site, line.site_id)
    assert site is not None
    return site


def _robot(session: Session, robot_id: int, caller: Principal) -> Robot:
    return scoped_get(session, Robot, robot_id, caller)


@router.post("", response_model=RobotCredentials, status_code=201)
def create_robot(
    body: RobotCreate,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_ROBOTS, "creating robots")],
) -> RobotCredentials:
    """Register a robot on one of your lines; the answer holds its password (shown once) and examples."""
    line = scoped_get(session, Line, body.line_id, caller)
    tenant = session.get(Tenant, line.tenant_id)
    assert tenant is not None
    username = broker_sync.robot_username(tenant.slug, line.slug, body.slug)
    if session.exec(select(Robot).where(Robot.mqtt_username == username)).first() is not None:
        raise Conflict(f"robot {body.slug!r} already exists on line {line.slug!r}")
    assert line.id is not None
    robot = Robot(tenant_id=line.tenant_id, line_id=line.id, slug=body.slug, mqtt_username=username)
    session.add(robot)
    try:
        session.flush()
    except IntegrityError as e:
        raise Conflict(f"robot {body.slug!r} already exists on line {line.slug!r}") from e
    with sites.admin(settings, _site_of(session, robot)) as broker:
        broker.deny_by_default()
        for client in sites.robot_broker_clients(session, settings, robot):
            broker.replace(client)
    session.commit()
    session.refresh(robot)
    return _credentials(session, settings, robot)


@router.get("", response_model=list[RobotPublic])
def list_robots(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_ROBOTS, "listing robots")],
    page: PageDep,
    line_id: IdFilter = None,
) -> list[Robot]:
    """Your tenant's robots by id (operators: all), a page at a time (X-Next-Cursor)."""
    query = own_tenant(select(Robot).order_by(col(Robot.id)), Robot, caller)
    if line_id is not None:
        query = query.where(Robot.line_id == line_id)
    return page.of(session, query, Robot)


@router.get("/{robot_id}", response_model=RobotPublic)
def get_robot(
    robot_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_ROBOTS, "reading robots")],
) -> Robot:
    return _robot(session, robot_id, caller)


@router.post("/{robot_id}/rotate", response_model=RobotCredentials)
def rotate_robot(
    robot_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_ROBOTS, "rotating robot credentials")],
) -> RobotCredentials:
    """New password (shown once); the old one stops working and its connections are closed."""
    robot = _robot(session, robot_id, caller)
    if robot.status is not RobotStatus.ACTIVE:
        raise Conflict(f"robot {robot.slug} is {robot.status.value}; create a new robot instead")
    robot.credential_epoch += 1
    with sites.admin(settings, _site_of(session, robot)) as broker:
        for client in sites.robot_broker_clients(session, settings, robot):
            broker.replace(client)
    session.commit()
    session.refresh(robot)
    return _credentials(session, settings, robot)


@router.post("/{robot_id}/revoke", response_model=RobotPublic)
def revoke_robot(
    robot_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_ROBOTS, "revoking robots")],
) -> Robot:
    """Remove the robot's broker credentials and disconnect it; final."""
    robot = _robot(session, robot_id, caller)
    robot.status = transition(robot.status, RobotStatus.REVOKED, what=f"robot {robot.slug}")
    with sites.admin(settings, _site_of(session, robot)) as broker:
        for client in sites.robot_broker_clients(session, settings, robot):
            broker.remove(client.username)
    session.commit()
    session.refresh(robot)
    return robot
