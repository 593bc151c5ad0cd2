"""The 9P2000.u and plain 9P2000 handlers of a :class:`~.session.Session`.

The session keeps its dispatcher, fid table, flush and I/O paths; after a
Tversion for one of these dialects it dispatches through
:meth:`Dialect9P2000.handlers` instead of its 9P2000.L methods.  The
messages all dialects share (walk, clunk, remove, read, write) run the
session's own code; what differs maps onto the same back-end calls as .L:

* Topen/Tcreate -> open/create (Tcreate's perm bits and extension string:
  mkdir, symlink, link, mknod);
* Tstat -> getattr (+ readlink for a symlink's extension), Twstat ->
  setattr and, for a new name, rename within the directory;
* a Tread of an open directory -> readdir, one stat per entry.

Confinement, permissions and the security models are the back end's, so
they are exactly .L's.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
from typing import TYPE_CHECKING, Any

from ..backends.base import Credentials, Node, SetAttr, Stat
from ..protocol import dotu as u
from ..protocol import ninep as p
from .fids import Fid, FidKind
from .session import Handler, _check_new_name

if TYPE_CHECKING:
    from .session import Session

#: The 9P mode bits that say what kind of file it is (a Twstat may not change them).
_TYPE_BITS = u.DMDIR | u.DMSYMLINK | u.DMLINK | u.DMDEVICE | u.DMNAMEDPIPE | u.DMSOCKET
#: Unix mode bits <-> 9P2000.u mode bits beyond the permissions.
_SPECIAL_BITS = ((_stat.S_ISUID, u.DMSETUID), (_stat.S_ISGID, u.DMSETGID),
                 (_stat.S_ISVTX, u.DMSETVTX))
_ACCESS = {u.OREAD: os.O_RDONLY, u.OWRITE: os.O_WRONLY, u.ORDWR: os.O_RDWR, u.OEXEC: os.O_RDONLY}
#: Entries a directory read asks the back end for at once.
_READDIR_BATCH = 64


def omode_to_host(mode: int, dotu: bool) -> int:
    """A Topen/Tcreate mode byte -> host open flags (never following a symlink)."""
    flags = _ACCESS[mode & 3] | os.O_NOFOLLOW | os.O_CLOEXEC
    if mode & u.OTRUNC:
        flags |= os.O_TRUNC
    if dotu and mode & u.OAPPEND:
        flags |= os.O_APPEND
    return flags


def dm_mode(mode: int, dotu: bool) -> int:
    """A host st_mode -> a stat's 9P mode."""
    out = mode & 0o777
    if _stat.S_ISDIR(mode):
        out |= u.DMDIR
    if dotu:
        if _stat.S_ISLNK(mode):
            out |= u.DMSYMLINK
        elif _stat.S_ISSOCK(mode):
            out |= u.DMSOCKET
        elif _stat.S_ISFIFO(mode):
            out |= u.DMNAMEDPIPE
        elif _stat.S_ISBLK(mode) or _stat.S_ISCHR(mode):
            out |= u.DMDEVICE
        for unix, dm in _SPECIAL_BITS:
            if mode & unix:
                out |= dm
    return out


def unix_perm(dmmode: int, dotu: bool) -> int:
    """A Tcreate perm / Twstat mode -> the host permission bits it asks for."""
    out = dmmode & 0o777
    if dotu:
        for unix, dm in _SPECIAL_BITS:
            if dmmode & dm:
                out |= unix
    return out


def _u32(seconds_ns: int) -> int:
    return (seconds_ns // 10**9) & 0xFFFFFFFF


def _walked(path: tuple[str, ...], names: list[str]) -> tuple[str, ...]:
    """*path* after walking *names* (``..`` at the root stays there, as the back ends do)."""
    for name in names:
        path = path[:-1] if name == ".." else path + (name,)
    return path


def _device(extension: str) -> tuple[int, int]:
    """Tcreate's DMDEVICE extension ``"c MAJOR MINOR"`` / ``"b ..."`` -> (S_IF*, rdev)."""
    parts = extension.split()
    if len(parts) != 3 or parts[0] not in ("c", "b") or not all(x.isdigit() for x in parts[1:]):
        raise OSError(errno.EINVAL, "device extension is not 'c|b MAJOR MINOR'")
    kind = _stat.S_IFCHR if parts[0] == "c" else _stat.S_IFBLK
    return kind, os.makedev(int(parts[1]), int(parts[2]))


class Dialect9P2000:
    """The 9P2000 family on one session: 9P2000.u (``dotu``) or plain 9P2000."""

    def __init__(self, session: Session, messages: p.MessageSet) -> None:
        self.session = session
        self.backend = session.backend
        self.dotu = messages is u.DOTU

    def handlers(self) -> dict[int, Handler]:
        s = self.session
        return {
            p.Tversion.TYPE: s._Tversion,
            p.Tauth.TYPE: self._Tauth,
            p.Tattach.TYPE: self._Tattach,
            p.Twalk.TYPE: self._Twalk,
            p.Tclunk.TYPE: self._Tclunk,
            p.Tremove.TYPE: s._Tremove,
            u.Topen.TYPE: self._Topen,
            u.Tcreate.TYPE: self._Tcreate,
            u.Tstat.TYPE: self._Tstat,
            u.Twstat.TYPE: self._Twstat,
        }

    # --- session messages: the .L ones, with n_uname where plain 9P2000 has none ------

    async def _Tauth(self, msg: p.Tauth | u.TauthPlain) -> Any:
        if isinstance(msg, u.TauthPlain):
            msg = p.Tauth(msg.afid, msg.uname, msg.aname, p.NOFID)
        return await self.session._Tauth(msg)

    async def _Tattach(self, msg: p.Tattach | u.TattachPlain) -> p.Rattach:
        if isinstance(msg, u.TattachPlain):
            msg = p.Tattach(msg.fid, msg.afid, msg.uname, msg.aname, p.NOFID)
        return await self.session._Tattach(msg)

    async def _Twalk(self, msg: p.Twalk) -> p.Rwalk:
        path = _walked(self.session.fids.get(msg.fid).path, msg.wnames)
        reply = await self.session._Twalk(msg)
        if len(reply.wqids) == len(msg.wnames):
            try:
                self.session.fids.get(msg.newfid).path = path
            except OSError:  # clunked meanwhile
                pass
        return reply

    async def _Tclunk(self, msg: p.Tclunk) -> p.Rclunk:
        if self.session.fids.get(msg.fid).remove_on_clunk:
            try:  # ORCLOSE: removed "if permissions allow"; the clunk always succeeds
                await self.session._Tremove(p.Tremove(msg.fid))
            except OSError:
                pass
            return p.Rclunk()
        return await self.session._Tclunk(msg)

    # --- open / create ---------------------------------------------------------------------

    async def _Topen(self, msg: u.Topen) -> u.Ropen:
        s = self.session
        fid = s._node_fid(msg.fid)
        flags = omode_to_host(msg.mode, self.dotu)
        if fid.is_dir and flags & (3 | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EISDIR, "a directory opens for reading only")
        if msg.mode & u.ORCLOSE and s.config.readonly:
            raise OSError(errno.EROFS, "read-only export")
        qid, iounit = await s.open_fid(fid, flags)
        fid.dir_pos = fid.dir_cookie = 0
        fid.remove_on_clunk = bool(msg.mode & u.ORCLOSE)
        return u.Ropen(qid, iounit)

    async def _Tcreate(self, msg: Any) -> u.Rcreate:
        """Create by perm: a directory (then open it), a symlink, hard link or
        special file (the fid becomes it), or else a file opened with *mode*."""
        s = self.session
        fid = s._node_fid(msg.fid)
        if not fid.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        _check_new_name(msg.name)
        perm = msg.perm if self.dotu else msg.perm & (u.DMDIR | 0o777)
        extension = msg.extension if self.dotu else ""
        mode = unix_perm(perm, self.dotu)
        path = fid.path + (msg.name,)
        # In use until the new node is ready: a clunk racing this waits, so
        # the back end never sees the directory's node after its clunk.
        with fid.held():
            # The new file's group: the directory's (no gid on the wire in these dialects).
            _, dir_stat = await s._call(self.backend.getattr, fid)
            cred = Credentials(fid.uid, dir_stat.gid)
            if not perm & (_TYPE_BITS | u.DMDIR):
                flags = omode_to_host(msg.mode, self.dotu) | os.O_CREAT | os.O_EXCL
                qid, iounit = await s.create_fid(fid, msg.name, flags, mode, cred)
                fid.path = path
                fid.remove_on_clunk = bool(msg.mode & u.ORCLOSE)
                return u.Rcreate(qid, iounit)
            await self._make(fid, msg.name, perm, mode, extension, cred)
            qids, new = await s._call(self.backend.walk, fid, [msg.name])
            entry = Fid(new, fid.uid, is_dir=bool(perm & u.DMDIR), path=path)
            qid, iounit = qids[-1], s._iounit(0)
            if perm & u.DMDIR:  # opened before anyone can see it as the fid
                try:
                    qid, iounit = await s.open_fid(entry, os.O_RDONLY | os.O_DIRECTORY |
                                                   os.O_NOFOLLOW | os.O_CLOEXEC)
                except BaseException:
                    await s._release(entry)
                    raise
        await s._install(msg.fid, entry, replace=True)
        return u.Rcreate(qid, iounit)

    async def _make(self, dfid: Fid, name: str, perm: int, mode: int, extension: str,
                    cred: Credentials) -> None:
        """Make the directory, symlink, hard link or special file a Tcreate asks for."""
        s = self.session
        if perm & u.DMDIR:
            await s._call(self.backend.mkdir, dfid, name, mode, cred)
        elif perm & u.DMSYMLINK:
            if not extension or "\0" in extension:
                raise OSError(errno.EINVAL, "bad symlink target")
            await s._call(self.backend.symlink, dfid, name, extension, cred)
        elif perm & u.DMLINK:
            number = extension.strip()  # Linux sends "%d\n"
            if not number.isdigit():
                raise OSError(errno.EINVAL, "link extension is not a fid number")
            target = s.fids.get(int(number))
            if target.is_dir:
                raise OSError(errno.EPERM, "hard link to a directory")
            if target.kind in (FidKind.XATTR_READ, FidKind.XATTR_WRITE):
                raise OSError(errno.EINVAL, "xattr fid")
            await s._call(self.backend.link, dfid, target, name)
        else:
            kind, rdev = (_device(extension) if perm & u.DMDEVICE else
                          (_stat.S_IFIFO if perm & u.DMNAMEDPIPE else _stat.S_IFSOCK, 0))
            await s._call(self.backend.mknod, dfid, name, kind | mode, rdev, cred)

    # --- stat / wstat -----------------------------------------------------------------------

    async def stat_of(self, file: Fid | Node, name: str) -> u.Dir | u.DirU:
        """The stat of *file* (a fid, or a node of the handler's own), called
        *name*.  In .u the extension says what the mode cannot: a symlink's
        target, a device's numbers, and for files and directories
        ``HARDLINKCOUNT n`` (the only link count Linux reads)."""
        call = self.session._call
        qid, st = await call(self.backend.getattr, file)
        extension = ""
        if self.dotu:
            if _stat.S_ISLNK(st.mode):
                extension = await call(self.backend.readlink, file)
            elif _stat.S_ISCHR(st.mode) or _stat.S_ISBLK(st.mode):
                extension = (f"{'c' if _stat.S_ISCHR(st.mode) else 'b'} "
                             f"{os.major(st.rdev)} {os.minor(st.rdev)}")
            elif _stat.S_ISREG(st.mode) or _stat.S_ISDIR(st.mode):
                extension = f"HARDLINKCOUNT {st.nlink}"
        return self._dir(qid, st, name, extension)

    def _dir(self, qid: p.Qid, st: Stat, name: str, extension: str) -> u.Dir | u.DirU:
        uid, gid = self.session.guest_ids(st.uid, st.gid)
        head = (0, 0, qid, dm_mode(st.mode, self.dotu), _u32(st.atime_ns), _u32(st.mtime_ns),
                st.size, name, str(uid), str(gid), "")
        if self.dotu:
            return u.DirU(*head, extension, uid, gid, 0)
        return u.Dir(*head)

    async def _Tstat(self, msg: u.Tstat) -> Any:
        fid = self.session.fids.get(msg.fid)
        if fid.kind in (FidKind.XATTR_READ, FidKind.XATTR_WRITE):
            raise OSError(errno.EINVAL, "xattr fid")
        with fid.held():
            d = await self.stat_of(fid, fid.path[-1] if fid.path else "/")
        return u.Rstat(d) if isinstance(d, u.DirU) else u.RstatPlain(d)

    async def _Twstat(self, msg: Any) -> u.Rwstat:
        """Change what the stat does not leave alone (all ones, or an empty
        string): mode, times and owner by setattr, length by truncation, the
        name by a rename within the directory.  A stat that changes nothing
        asks for the file to be synced."""
        s = self.session
        fid = s.fids.get(msg.fid)
        if fid.kind in (FidKind.XATTR_READ, FidKind.XATTR_WRITE):
            raise OSError(errno.EINVAL, "xattr fid")
        d = msg.stat
        name = fid.path[-1] if fid.path else "/"
        rename = bool(d.name) and d.name != name
        if rename:
            _check_new_name(d.name, errno.EISDIR)
            if not fid.path:
                raise OSError(errno.EBUSY, "cannot rename the root")
        with fid.held():
            change = await self._setattr_of(fid, d)
            if change is None and not rename:
                if fid.kind is FidKind.OPEN:
                    await s._call(self.backend.fsync, fid, False)
                return u.Rwstat()
            if change is not None:
                await s._call(self.backend.setattr, fid, change)
            if rename:
                await self._rename(fid, d.name)
        return u.Rwstat()

    async def _rename(self, fid: Fid, name: str) -> None:
        """Rename *fid*'s file to *name* in the same directory."""
        call = self.session._call
        root, _ = await call(self.backend.attach, "", fid.uid, "")
        try:
            parent = await self._parent_of(fid, root)
            try:
                await call(self.backend.rename, fid, parent, name)
            finally:
                await call(self.backend.clunk, parent)  # the handler's own nodes
        finally:
            await call(self.backend.clunk, root)
        fid.path = fid.path[:-1] + (name,)

    async def _parent_of(self, fid: Fid, root: Node) -> Node:
        """A node for the directory that holds *fid*'s file, walked from *root*
        along the fid's path (a file has no ``..`` to walk); ESTALE if that path
        no longer leads to the fid's file (renamed by someone else)."""
        call = self.session._call
        try:
            qids, parent = await call(self.backend.walk, root, list(fid.path[:-1]))
        except FileNotFoundError:
            parent = None
        if parent is None:
            raise OSError(errno.ESTALE, "the fid's directory moved")
        try:
            try:
                qids, check = await call(self.backend.walk, parent, [fid.path[-1]])
            except FileNotFoundError:
                raise OSError(errno.ESTALE, "the fid's file moved") from None
            if check is not None:
                await call(self.backend.clunk, check)
            qid, _ = await call(self.backend.getattr, fid)
            if check is None or qids[-1].path != qid.path:
                raise OSError(errno.ESTALE, "the fid's file moved")
        except BaseException:
            await call(self.backend.clunk, parent)
            raise
        return parent

    async def _setattr_of(self, fid: Fid, d: u.Dir | u.DirU) -> SetAttr | None:
        """The setattr a wstat asks for (None: nothing)."""
        change = SetAttr()
        if d.mode != u.NO_U32:
            _, st = await self.session._call(self.backend.getattr, fid)
            type_bits = _TYPE_BITS if self.dotu else u.DMDIR
            if (d.mode ^ dm_mode(st.mode, self.dotu)) & type_bits:
                raise OSError(errno.EINVAL, "wstat cannot change the file type")
            change.mode = unix_perm(d.mode, self.dotu)
        if d.atime != u.NO_U32:
            change.atime = (d.atime, 0)
        if d.mtime != u.NO_U32:
            change.mtime = (d.mtime, 0)
        if d.length != u.NO_U64:
            change.size = d.length
            change.drop_setid = fid.clears_setid
        if isinstance(d, u.DirU):
            change.uid = None if d.n_uid == u.NO_U32 else d.n_uid
            change.gid = None if d.n_gid == u.NO_U32 else d.n_gid
        else:  # plain 9P2000 names owners; numeric ones are all a host can take
            for field, value in (("uid", d.uid), ("gid", d.gid)):
                if value and not value.isdigit():
                    raise OSError(errno.EPERM, f"{field} {value!r} is not numeric")
                setattr(change, field, int(value) if value else None)
        self.session.host_owner(change)
        return None if change == SetAttr() else change

    # --- directory reads --------------------------------------------------------------------

    async def read_dir(self, fid: Fid, offset: int, count: int) -> bytes:
        """Whole stats of the entries from *offset* (0, or where the last read
        ended: the only offsets 9P allows in a directory), at most *count* bytes."""
        if offset == 0:
            cookie = 0
        elif offset == fid.dir_pos:
            cookie = fid.dir_cookie
        else:
            raise OSError(errno.EINVAL, "directory read not where the last one ended")
        out: list[bytes] = []
        used = 0
        full = False
        while not full:
            entries = await self.session._call(self.backend.readdir, fid, cookie, _READDIR_BATCH)
            if not entries:
                break
            for entry in entries:
                raw = await self._entry(fid, os.fsdecode(entry.name))
                if raw is not None and used + len(raw) > count:
                    if not out:
                        raise OSError(errno.EINVAL, "count too small for a directory entry")
                    full = True
                    break
                if raw is not None:
                    out.append(raw)
                    used += len(raw)
                cookie = entry.offset
        fid.dir_pos = offset + used
        fid.dir_cookie = cookie
        return b"".join(out)

    async def _entry(self, fid: Fid, name: str) -> bytes | None:
        """One directory entry's stat on the wire; None for one to skip: plain
        9P2000 lists no ``.`` or ``..``, and an entry that cannot be stat'd
        (removed meanwhile, or refused, e.g. by ``--multidevs forbid``) is left
        out rather than failing the whole listing."""
        if name in (".", "..") and not self.dotu:
            return None
        try:
            _, node = await self.session._call(self.backend.walk, fid,
                                               [] if name == "." else [name])
        except OSError:
            return None
        try:
            return u.encode_dir(await self.stat_of(node, name))
        except OSError:
            return None
        finally:
            await self.session._call(self.backend.clunk, node)
