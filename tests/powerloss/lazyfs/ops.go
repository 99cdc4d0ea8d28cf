package main

// The FUSE requests, against the live side of the model under one lock. Only Fsync and
// FsyncDir touch the durable side. After a power cut every request fails with EIO.

import (
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	fsyncFlagData   = 1 // FUSE_FSYNC_FDATASYNC: treated like fsync (data and size)
	renameNoReplace = 1
	renameExchange  = 2
	fallocKeepSize  = 1
)

type lazyFS struct {
	fuse.RawFileSystem

	mu      sync.Mutex
	inodes  map[uint64]*inode
	nextIno uint64
	dead    bool // the power is off: every request fails
	dirs    map[uint64][]fuse.DirEntry
	nextFh  uint64
	fsyncs  uint64 // file fsyncs and directory fsyncs served, for the report
	dsyncs  uint64
}

func newLazyFS(inodes map[uint64]*inode, nextIno uint64) *lazyFS {
	return &lazyFS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		inodes:        inodes,
		nextIno:       nextIno,
		dirs:          map[uint64][]fuse.DirEntry{},
		nextFh:        1,
	}
}

func (fs *lazyFS) String() string { return "lazyfs" }

func errno(e syscall.Errno) fuse.Status { return fuse.Status(e) }

// node returns the inode for a request, or EIO once the power is off.
func (fs *lazyFS) node(id uint64) (*inode, fuse.Status) {
	if fs.dead {
		return nil, fuse.EIO
	}
	n := fs.inodes[id]
	if n == nil {
		return nil, fuse.ENOENT
	}
	return n, fuse.OK
}

func (fs *lazyFS) dir(id uint64) (*inode, fuse.Status) {
	n, st := fs.node(id)
	if st == fuse.OK && !n.isDir() {
		return nil, errno(syscall.ENOTDIR)
	}
	return n, st
}

func fill(n *inode, a *fuse.Attr) {
	a.Ino = n.ino
	a.Mode = n.mode
	a.Nlink = n.nlink
	a.Owner = fuse.Owner{Uid: n.uid, Gid: n.gid}
	a.Blksize = pageSize
	switch {
	case n.isFile():
		a.Size = uint64(n.live.size)
		a.Blocks = n.blocks()
	case n.isDir():
		a.Size = pageSize
		a.Blocks = pageSize / 512
	default:
		a.Size = uint64(len(n.target))
	}
	a.SetTimes(&n.atime, &n.mtime, &n.ctime)
}

// Timeouts stay zero: the kernel asks again every time, so what it sees is the model.
func entry(n *inode, out *fuse.EntryOut) {
	out.NodeId = n.ino
	out.Generation = 1
	fill(n, &out.Attr)
}

func (fs *lazyFS) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != fuse.OK {
		return st
	}
	child := d.liveEntries[name]
	if child == nil {
		return fuse.ENOENT
	}
	entry(child, out)
	return fuse.OK
}

func (fs *lazyFS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return st
	}
	fill(n, &out.Attr)
	return fuse.OK
}

func (fs *lazyFS) SetAttr(_ <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return st
	}
	now := time.Now()
	if size, ok := in.GetSize(); ok {
		if !n.isFile() {
			return errno(syscall.EINVAL)
		}
		n.truncate(int64(size))
		n.mtime = now
	}
	if mode, ok := in.GetMode(); ok {
		n.mode = n.mode&syscall.S_IFMT | mode
	}
	if uid, ok := in.GetUID(); ok {
		n.uid = uid
	}
	if gid, ok := in.GetGID(); ok {
		n.gid = gid
	}
	if t, ok := in.GetATime(); ok {
		n.atime = t
	} else if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
		n.atime = now
	}
	if t, ok := in.GetMTime(); ok {
		n.mtime = t
	} else if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
		n.mtime = now
	}
	n.ctime = now
	fill(n, &out.Attr)
	return fuse.OK
}

// add links a new inode under d; the entry is live only until d is fsynced.
func (fs *lazyFS) add(d *inode, name string, mode uint32, h *fuse.InHeader) (*inode, fuse.Status) {
	if d.liveEntries[name] != nil {
		return nil, errno(syscall.EEXIST)
	}
	now := time.Now()
	n := newInode(fs.nextIno, mode, h.Uid, h.Gid, now)
	fs.nextIno++
	fs.inodes[n.ino] = n
	d.liveEntries[name] = n
	if n.isDir() {
		d.nlink++
	} else {
		n.nlink = 1
	}
	d.mtime, d.ctime = now, now
	return n, fuse.OK
}

func (fs *lazyFS) Mknod(_ <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	if in.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return errno(syscall.EPERM) // regular files only: nothing here needs the others
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	n, st := fs.add(d, name, in.Mode, &in.InHeader)
	if st == fuse.OK {
		entry(n, out)
	}
	return st
}

func (fs *lazyFS) Mkdir(_ <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	n, st := fs.add(d, name, syscall.S_IFDIR|in.Mode&07777, &in.InHeader)
	if st == fuse.OK {
		entry(n, out)
	}
	return st
}

func (fs *lazyFS) Symlink(_ <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != fuse.OK {
		return st
	}
	n, st := fs.add(d, name, syscall.S_IFLNK|0o777, h)
	if st == fuse.OK {
		n.target = target
		entry(n, out)
	}
	return st
}

func (fs *lazyFS) Readlink(_ <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(h.NodeId)
	if st != fuse.OK {
		return nil, st
	}
	if n.mode&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, errno(syscall.EINVAL)
	}
	return []byte(n.target), fuse.OK
}

// drop removes a live name; the inode lives on while open or named durably.
func drop(d *inode, name string, n *inode, now time.Time) {
	delete(d.liveEntries, name)
	if n.isDir() {
		d.nlink--
	} else {
		n.nlink--
	}
	n.ctime, d.mtime, d.ctime = now, now, now
}

func (fs *lazyFS) Unlink(_ <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != fuse.OK {
		return st
	}
	n := d.liveEntries[name]
	if n == nil {
		return fuse.ENOENT
	}
	if n.isDir() {
		return errno(syscall.EISDIR)
	}
	drop(d, name, n, time.Now())
	return fuse.OK
}

func (fs *lazyFS) Rmdir(_ <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != fuse.OK {
		return st
	}
	n := d.liveEntries[name]
	if n == nil {
		return fuse.ENOENT
	}
	if !n.isDir() {
		return errno(syscall.ENOTDIR)
	}
	if len(n.liveEntries) > 0 {
		return errno(syscall.ENOTEMPTY)
	}
	drop(d, name, n, time.Now())
	n.nlink = 0
	return fuse.OK
}

func (fs *lazyFS) Rename(_ <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	from, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	to, st := fs.dir(in.Newdir)
	if st != fuse.OK {
		return st
	}
	n := from.liveEntries[oldName]
	if n == nil {
		return fuse.ENOENT
	}
	old := to.liveEntries[newName]
	now := time.Now()
	switch {
	case in.Flags&^(renameNoReplace|renameExchange) != 0:
		return errno(syscall.EINVAL)
	case in.Flags&renameExchange != 0:
		if old == nil {
			return fuse.ENOENT
		}
		from.liveEntries[oldName], to.liveEntries[newName] = old, n
		if n.isDir() != old.isDir() {
			if n.isDir() {
				from.nlink--
				to.nlink++
			} else {
				from.nlink++
				to.nlink--
			}
		}
		n.ctime, old.ctime = now, now
		from.mtime, from.ctime, to.mtime, to.ctime = now, now, now, now
		return fuse.OK
	case old == n:
		return fuse.OK // two names of one file: rename(2) does nothing
	case old != nil && in.Flags&renameNoReplace != 0:
		return errno(syscall.EEXIST)
	case old != nil && old.isDir() && !n.isDir():
		return errno(syscall.EISDIR)
	case old != nil && !old.isDir() && n.isDir():
		return errno(syscall.ENOTDIR)
	case old != nil && old.isDir() && len(old.liveEntries) > 0:
		return errno(syscall.ENOTEMPTY)
	}
	if n.isDir() && fs.inside(to, n) {
		return errno(syscall.EINVAL)
	}
	if old != nil {
		drop(to, newName, old, now)
		if old.isDir() {
			old.nlink = 0
		}
	}
	delete(from.liveEntries, oldName)
	to.liveEntries[newName] = n
	if n.isDir() {
		from.nlink--
		to.nlink++
	}
	n.ctime = now
	from.mtime, from.ctime, to.mtime, to.ctime = now, now, now, now
	return fuse.OK
}

// inside reports whether d is dir or lies below it (a directory cannot move into itself).
func (fs *lazyFS) inside(d, dir *inode) bool {
	if d == dir {
		return true
	}
	for _, child := range dir.liveEntries {
		if child.isDir() && fs.inside(d, child) {
			return true
		}
	}
	return false
}

func (fs *lazyFS) Link(_ <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	n, st := fs.node(in.Oldnodeid)
	if st != fuse.OK {
		return st
	}
	if n.isDir() {
		return errno(syscall.EPERM)
	}
	if d.liveEntries[name] != nil {
		return errno(syscall.EEXIST)
	}
	now := time.Now()
	d.liveEntries[name] = n
	n.nlink++
	n.ctime, d.mtime, d.ctime = now, now, now
	entry(n, out)
	return fuse.OK
}

func (fs *lazyFS) Access(_ <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	_, st := fs.node(in.NodeId)
	return st
}

func (fs *lazyFS) handle() uint64 {
	fs.nextFh++
	return fs.nextFh
}

func (fs *lazyFS) Create(_ <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	n := d.liveEntries[name]
	switch {
	case n != nil && in.Flags&syscall.O_EXCL != 0:
		return errno(syscall.EEXIST)
	case n != nil && n.isDir():
		return errno(syscall.EISDIR)
	case n != nil:
		if in.Flags&syscall.O_TRUNC != 0 {
			n.truncate(0)
			n.mtime, n.ctime = time.Now(), time.Now()
		}
	default:
		n, st = fs.add(d, name, syscall.S_IFREG|in.Mode&07777, &in.InHeader)
		if st != fuse.OK {
			return st
		}
	}
	entry(n, &out.EntryOut)
	out.Fh = fs.handle()
	return fuse.OK
}

func (fs *lazyFS) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return st
	}
	if n.isDir() {
		return errno(syscall.EISDIR)
	}
	out.Fh = fs.handle()
	return fuse.OK
}

func (fs *lazyFS) Read(_ <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return nil, st
	}
	if !n.isFile() {
		return nil, errno(syscall.EINVAL)
	}
	if int(in.Size) < len(buf) {
		buf = buf[:in.Size]
	}
	got := n.read(int64(in.Offset), buf)
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

func (fs *lazyFS) Write(_ <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return 0, st
	}
	if !n.isFile() {
		return 0, errno(syscall.EINVAL)
	}
	n.write(int64(in.Offset), data)
	n.mtime, n.ctime = time.Now(), time.Now()
	return uint32(len(data)), fuse.OK
}

func (fs *lazyFS) Fallocate(_ <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return st
	}
	switch {
	case !n.isFile():
		return errno(syscall.ENODEV)
	case in.Mode == fallocKeepSize:
		return fuse.OK
	case in.Mode != 0:
		return errno(syscall.EOPNOTSUPP)
	}
	// Allocated space reads as zeros: a hole does too, so only the size changes.
	if end := int64(in.Offset + in.Length); end > n.live.size {
		n.truncate(end)
		n.mtime, n.ctime = time.Now(), time.Now()
	}
	return fuse.OK
}

func (fs *lazyFS) Flush(_ <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.OK }

func (fs *lazyFS) Release(_ <-chan struct{}, in *fuse.ReleaseIn) {}

func (fs *lazyFS) Fsync(_ <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != fuse.OK {
		return st
	}
	if n.isFile() { // fsync and fdatasync alike: data and size
		n.syncData()
		fs.fsyncs++
	}
	return fuse.OK
}

func (fs *lazyFS) FsyncDir(_ <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	d.syncEntries()
	fs.dsyncs++
	return fuse.OK
}

func (fs *lazyFS) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	// A snapshot of the names, so that offsets stay valid while the folder changes.
	list := []fuse.DirEntry{
		{Name: ".", Ino: d.ino, Mode: syscall.S_IFDIR},
		{Name: "..", Ino: fuse.FUSE_UNKNOWN_INO, Mode: syscall.S_IFDIR},
	}
	names := make([]string, 0, len(d.liveEntries))
	for name := range d.liveEntries {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		child := d.liveEntries[name]
		list = append(list, fuse.DirEntry{Name: name, Ino: child.ino, Mode: child.mode})
	}
	out.Fh = fs.handle()
	fs.dirs[out.Fh] = list
	return fuse.OK
}

func (fs *lazyFS) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.dead {
		return fuse.EIO
	}
	list := fs.dirs[in.Fh]
	for i := int(in.Offset); i < len(list); i++ {
		e := list[i]
		e.Off = uint64(i + 1)
		if !out.AddDirEntry(e) {
			break
		}
	}
	return fuse.OK
}

func (fs *lazyFS) ReleaseDir(in *fuse.ReleaseIn) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.dirs, in.Fh)
}

func (fs *lazyFS) StatFs(_ <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.dead {
		return fuse.EIO
	}
	const blocks = 1 << 28 // 1 TiB of 4 KiB blocks, nearly all free
	out.Blocks, out.Bfree, out.Bavail = blocks, blocks-1024, blocks-1024
	out.Files, out.Ffree = 1<<24, 1<<24-uint64(len(fs.inodes))
	out.Bsize, out.Frsize, out.NameLen = pageSize, pageSize, 255
	return fuse.OK
}
