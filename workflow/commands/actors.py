"""Several users acting through the one executor, each proving who acts: by a session started
with its password, or by the password itself where a message needs it (a signature, a
credential change). For programs that act as several people: the demo's story, the tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime

from workflow.commands.executor import Executor, Outcome
from workflow.commands.messages import AddUser, ChangePassword, Message
from workflow.commands.roles import NEEDS_PASSWORD
from workflow.identity import MAX_SESSION_HOURS, Credential, Password, Secret, SessionToken


@dataclass
class Actors:
    executor: Executor
    passwords: dict[str, Secret] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)  # accounts that present their secret
    sessions: dict[str, tuple[Secret, datetime]] = field(default_factory=dict)
    session_hours: float = MAX_SESSION_HOURS

    def know(self, name: str, password: str, *, service: bool = False) -> None:
        self.passwords[name] = Secret(password)
        self.sessions.pop(name, None)
        if service:
            self.services.add(name)

    def password(self, name: str) -> Password:
        return Password(name, self.passwords[name])

    def credential(self, name: str, message: Message | None = None) -> Credential:
        if name in self.services or isinstance(message, NEEDS_PASSWORD) or \
                name not in self.passwords:
            return Password(name, self.passwords.get(name, Secret("")))
        session = self.sessions.get(name)
        if session is None or session[1] <= self.executor.clock():
            token, expires = self.executor.login(self.password(name), self.session_hours)
            session = self.sessions[name] = (Secret(token), expires)
        return SessionToken(name, session[0])

    def send(self, name: str, message: Message, command_id: str | None = None) -> Outcome:
        return self.executor.execute(message, self.credential(name, message),
                                     command_id=command_id)

    def add_user(self, admin: str, name: str, role: str, site: str | None,
                 password: str) -> None:
        """A person added by `admin` with a random temporary password, who then sets
        `password` themselves (as a new user does at their first login)."""
        temporary = f"temporary-{secrets.token_urlsafe(12)}"
        while name.lower() in temporary.lower():  # random letters may spell a short name
            temporary = f"temporary-{secrets.token_urlsafe(12)}"
        self.send(admin, AddUser(name, role, site, Secret(temporary)))
        self.executor.execute(ChangePassword(name, Secret(password)),
                              Password(name, Secret(temporary)))
        self.know(name, password)

    def logout_all(self) -> None:
        for name in list(self.sessions):
            self.executor.logout(self.password(name))
        self.sessions.clear()
