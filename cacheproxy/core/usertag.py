"""The per-user tag, so an admin can purge one user's entries.

Entries are keyed per user, but keys are digests: nothing can list a user's
entries.  A tag every entry of the user carries makes "purge alice" one bump,
like any other invalidation.  The tag holds a keyed hash of the name, not the
name: tags travel to Redis keys, logs and the status page.

The proxy is to add ``user_tag(key, name)`` to an entry's tags for identities
that name a user (the user-name header or a JWT ``sun`` claim) and offer it as
``Proxy.user_tag(name)``; the admin API computes the same tag from the name it
is given, and answers 501 while the proxy lacks ``user_tag``.  Both use the
credential HMAC key, so replicas sharing Redis agree on it.
"""

from __future__ import annotations

import hashlib
import hmac

USER_TAG_PREFIX = "@user:"


def user_name(identity_user: str) -> str | None:
    """The user name an :attr:`Identity.user <cacheproxy.core.identity.Identity.user>`
    names (``name:alice`` or ``sun:alice`` -> ``alice``); None for an
    anonymous credential (``cred:...``), which no admin can name."""
    kind, sep, name = identity_user.partition(":")
    if sep and kind in ("name", "sun") and name:
        return name
    return None


def user_tag(key: bytes, name: str) -> str:
    """``@user:<hmac of name>``, the tag of every entry cached for ``name``."""
    digest = hmac.new(
        key, b"cacheproxy-user-tag\0" + name.encode("utf-8", "surrogateescape"), hashlib.sha256
    )
    return USER_TAG_PREFIX + digest.hexdigest()[:32]
