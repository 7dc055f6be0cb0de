"""Which sessions count as activity, and why the others don't. Pure functions of the config and a record."""

import ipaddress

from reaper.config.durations import format_seconds
from reaper.escape import escape


def ignore_reason(config, record):
    """Given the config and a lease or closed record, return why it never counts, or None if it may count.

    Length (min_session) is judged separately, since an open session's length still grows.
    """
    service = record.get("service")
    if service is not None and service not in config.services:
        return f"service {escape(service)} is not in services"
    user = record.get("user")
    if user in config.ignore_users:
        return f"user {escape(user)} is in ignore.users"
    network = _ignored_network(config, record.get("client") or record.get("rhost"))
    if network is not None:
        return f"client {escape(record.get('client') or record.get('rhost'))} is in ignore.networks ({network})"
    key = record.get("key")
    if key is not None and key in config.ignore_keys:
        return f"key {key} is in ignore.keys"
    return None


def _ignored_network(config, address):
    if not config.ignore_networks or not address:
        return None
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    for net in config.ignore_networks:
        if addr.version == net.version and addr in net:
            return net
    return None


def too_short(config, seconds):
    """Return why a session of this length doesn't count yet (or didn't), or None if it is long enough."""
    if seconds is None or seconds >= config.min_session:
        return None
    return f"open {format_seconds(seconds)}, shorter than min_session {format_seconds(config.min_session)}"


def counts_closed(config, record):
    """True if a closed session counted as activity: not ignored, and open for at least min_session."""
    if ignore_reason(config, record) is not None:
        return False
    length = None if record.get("opened") is None else record["closed"] - record["opened"]
    return too_short(config, length) is None
