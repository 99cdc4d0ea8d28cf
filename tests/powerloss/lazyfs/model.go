package main

// The model: every inode twice, as the running system sees it (live) and as the disk holds
// it (durable). fsync copies one file's live content to its durable content; fsync of a
// directory copies its live entries to its durable entries. Nothing else is ever durable.

import (
	"slices"
	"syscall"
	"time"
)

const pageSize = 4096

type page = [pageSize]byte

// content is a file's bytes as pages; a nil page is a hole (zeros). Pages shared between
// the live and the durable content are never written: a write to one copies it first.
type content struct {
	pages []*page
	size  int64
}

func (c content) clone() content {
	return content{pages: slices.Clone(c.pages), size: c.size}
}

// same reports whether two contents are one (no write since the last fsync).
func (c content) same(o content) bool {
	return c.size == o.size && slices.Equal(c.pages, o.pages)
}

type inode struct {
	ino   uint64
	mode  uint32 // type and permission bits, as in stat(2)
	uid   uint32
	gid   uint32
	atime time.Time
	mtime time.Time
	ctime time.Time
	nlink uint32 // live names (directories: 2 + live subdirectories)

	// Regular files.
	live, durable content
	// Directories.
	liveEntries, durableEntries map[string]*inode
	// Symbolic links: the target is written with the link, so it is as durable as its name.
	target string
}

func (n *inode) isDir() bool  { return n.mode&syscall.S_IFMT == syscall.S_IFDIR }
func (n *inode) isFile() bool { return n.mode&syscall.S_IFMT == syscall.S_IFREG }

func newInode(ino uint64, mode, uid, gid uint32, now time.Time) *inode {
	n := &inode{ino: ino, mode: mode, uid: uid, gid: gid, atime: now, mtime: now, ctime: now}
	if n.isDir() {
		n.liveEntries = map[string]*inode{}
		n.durableEntries = map[string]*inode{}
		n.nlink = 2
	}
	return n
}

// private returns the live page i, copied first if the durable content shares it.
func (n *inode) private(i int) *page {
	p := n.live.pages[i]
	shared := i < len(n.durable.pages) && n.durable.pages[i] == p
	if p == nil || shared {
		fresh := new(page)
		if p != nil {
			*fresh = *p
		}
		n.live.pages[i] = fresh
		p = fresh
	}
	return p
}

func pagesFor(size int64) int {
	return int((size + pageSize - 1) / pageSize)
}

// write puts data at off in the live content, growing the file as needed.
func (n *inode) write(off int64, data []byte) {
	end := off + int64(len(data))
	if need := pagesFor(end); need > len(n.live.pages) {
		n.live.pages = append(n.live.pages, make([]*page, need-len(n.live.pages))...)
	}
	for done := 0; done < len(data); {
		pos := off + int64(done)
		i, at := int(pos/pageSize), int(pos%pageSize)
		done += copy(n.private(i)[at:], data[done:])
	}
	if end > n.live.size {
		n.live.size = end
	}
}

// truncate sets the live size; bytes past a shrink read as zeros if the file grows again.
func (n *inode) truncate(size int64) {
	keep := pagesFor(size)
	if keep < len(n.live.pages) {
		clear(n.live.pages[keep:]) // drop references so the pages can be collected
		n.live.pages = n.live.pages[:keep]
	} else if keep > len(n.live.pages) {
		n.live.pages = append(n.live.pages, make([]*page, keep-len(n.live.pages))...)
	}
	if at := int(size % pageSize); at != 0 && size < n.live.size && n.live.pages[keep-1] != nil {
		clear(n.private(keep - 1)[at:])
	}
	n.live.size = size
}

// read copies live bytes at off into buf; returns how many (short at the end of file).
func (n *inode) read(off int64, buf []byte) int {
	if off >= n.live.size {
		return 0
	}
	if rest := n.live.size - off; int64(len(buf)) > rest {
		buf = buf[:rest]
	}
	for done := 0; done < len(buf); {
		pos := off + int64(done)
		i, at := int(pos/pageSize), int(pos%pageSize)
		var step int
		if p := n.live.pages[i]; p != nil {
			step = copy(buf[done:], p[at:])
		} else {
			step = min(pageSize-at, len(buf)-done)
			clear(buf[done : done+step])
		}
		done += step
	}
	return len(buf)
}

// syncData makes the file's live bytes and size durable (fsync, fdatasync).
func (n *inode) syncData() {
	n.durable = n.live.clone()
}

// syncEntries makes the directory's live entries durable (fsync of the directory).
func (n *inode) syncEntries() {
	n.durableEntries = make(map[string]*inode, len(n.liveEntries))
	for name, child := range n.liveEntries {
		n.durableEntries[name] = child
	}
}

func (n *inode) entriesSynced() bool {
	if len(n.liveEntries) != len(n.durableEntries) {
		return false
	}
	for name, child := range n.liveEntries {
		if n.durableEntries[name] != child {
			return false
		}
	}
	return true
}

func (n *inode) blocks() uint64 {
	held := 0
	for _, p := range n.live.pages {
		if p != nil {
			held++
		}
	}
	return uint64(held) * pageSize / 512
}
