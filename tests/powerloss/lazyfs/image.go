package main

// The backing folder is the disk: read whole at mount, written whole (the durable image
// at a power cut, everything at a clean unmount) into a fresh folder that then replaces
// it. Inode numbers survive remounts through a small state file beside it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

const rootIno = 1 // FUSE's root node id

// state is what a disk keeps that a plain folder does not: each file's inode number.
type state struct {
	NextIno uint64            `json:"next_ino"`
	Inodes  map[string]uint64 `json:"inodes"` // path under the backing folder -> inode
}

func readState(path string) (*state, error) {
	st := &state{NextIno: rootIno + 1, Inodes: map[string]uint64{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return st, nil
}

func (st *state) write(path string) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

type found struct {
	rel  string
	info os.FileInfo
	sys  *syscall.Stat_t
}

// load reads the backing folder into inodes whose live and durable sides agree.
func load(backing string, st *state) (map[uint64]*inode, uint64, error) {
	var all []found
	err := filepath.Walk(backing, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(backing, path)
		if err != nil {
			return err
		}
		all = append(all, found{rel, info, info.Sys().(*syscall.Stat_t)})
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	// Inode numbers: the remembered one where it is free, else a fresh one; names of one
	// backing file (hard links) share theirs.
	byBacking := map[uint64]uint64{}
	used := map[uint64]bool{rootIno: true}
	next := max(st.NextIno, rootIno+1)
	for _, f := range all {
		if want := st.Inodes[f.rel]; f.rel != "." && want > rootIno && !used[want] {
			if _, seen := byBacking[f.sys.Ino]; !seen {
				byBacking[f.sys.Ino] = want
				used[want] = true
				next = max(next, want+1)
			}
		}
	}
	byBacking[all[0].sys.Ino] = rootIno
	inodes := map[uint64]*inode{}
	inoOf := map[string]uint64{}
	for _, f := range all {
		ino, seen := byBacking[f.sys.Ino]
		if !seen {
			ino = next
			next++
			byBacking[f.sys.Ino] = ino
		}
		inoOf[f.rel] = ino
		n := inodes[ino]
		if n == nil {
			n = newInode(ino, f.sys.Mode, f.sys.Uid, f.sys.Gid, time.Unix(f.sys.Mtim.Unix()))
			n.atime = time.Unix(f.sys.Atim.Unix())
			n.nlink = 0
			if n.isDir() {
				n.nlink = 2
			}
			if err := readInto(n, filepath.Join(backing, f.rel), f.info); err != nil {
				return nil, 0, err
			}
			inodes[ino] = n
		}
		if f.rel == "." {
			continue
		}
		// Walk lists a folder before what is in it.
		parent := inodes[inoOf[filepath.Dir(f.rel)]]
		name := filepath.Base(f.rel)
		parent.liveEntries[name], parent.durableEntries[name] = n, n
		if n.isDir() {
			parent.nlink++
		} else {
			n.nlink++
		}
	}
	return inodes, next, nil
}

func readInto(n *inode, path string, info os.FileInfo) error {
	switch {
	case n.isDir():
		return nil
	case n.mode&syscall.S_IFMT == syscall.S_IFLNK:
		target, err := os.Readlink(path)
		n.target = target
		return err
	case !n.isFile():
		return fmt.Errorf("%s: only files, folders and symbolic links can be on this disk", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	size := info.Size()
	n.live = content{pages: make([]*page, pagesFor(size)), size: size}
	for i := range n.live.pages {
		p := new(page)
		got, err := f.ReadAt(p[:], int64(i)*pageSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if got > 0 && *p != (page{}) { // zeros stay a hole: a reserve file costs nothing
			n.live.pages[i] = p
		}
	}
	n.durable = n.live.clone()
	return nil
}

// image is one view of the tree: the durable one (a power cut) or the live one.
type image struct {
	durable bool
	written map[uint64]string // inode -> first path written (later names are hard links)
	st      *state
	loops   int // directories met twice (only a durable view can name one twice)
}

func (im *image) entries(d *inode) map[string]*inode {
	if im.durable {
		return d.durableEntries
	}
	return d.liveEntries
}

func (im *image) content(n *inode) content {
	if im.durable {
		return n.durable
	}
	return n.live
}

// materialize writes the view into a fresh folder, then puts it in place of the backing one.
func materialize(root *inode, backing, statePath string, durable bool) (*image, error) {
	im := &image{durable: durable, written: map[uint64]string{}}
	im.st = &state{Inodes: map[string]uint64{}}
	fresh, old := backing+".lazyfs-new", backing+".lazyfs-old"
	for _, p := range []string{fresh, old} {
		if err := os.RemoveAll(p); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(fresh, 0o700); err != nil {
		return nil, err
	}
	if err := im.writeDir(root, fresh, "."); err != nil {
		return nil, err
	}
	if err := os.Rename(backing, old); err != nil {
		return nil, err
	}
	if err := os.Rename(fresh, backing); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(old); err != nil {
		return nil, err
	}
	return im, im.st.write(statePath)
}

func (im *image) writeDir(d *inode, path, rel string) error {
	entries := im.entries(d)
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		n := entries[name]
		childPath, childRel := filepath.Join(path, name), filepath.Join(rel, name)
		if n.isDir() {
			if _, twice := im.written[n.ino]; twice {
				im.loops++
				continue
			}
			im.written[n.ino] = childPath
			if err := os.Mkdir(childPath, 0o700); err != nil {
				return err
			}
			if err := im.writeDir(n, childPath, childRel); err != nil {
				return err
			}
		} else if err := im.writeLeaf(n, childPath); err != nil {
			return err
		}
		im.st.Inodes[childRel] = n.ino
		im.st.NextIno = max(im.st.NextIno, n.ino+1)
	}
	return setMeta(d, path)
}

func (im *image) writeLeaf(n *inode, path string) error {
	if first, ok := im.written[n.ino]; ok {
		return os.Link(first, path)
	}
	im.written[n.ino] = path
	if !n.isFile() {
		if err := os.Symlink(n.target, path); err != nil {
			return err
		}
		return os.Lchown(path, int(n.uid), int(n.gid))
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	c := im.content(n)
	err = f.Truncate(c.size)
	for i, p := range c.pages {
		if p != nil && err == nil {
			end := min(int64(pageSize), c.size-int64(i)*pageSize)
			_, err = f.WriteAt(p[:end], int64(i)*pageSize)
		}
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return err
	}
	return setMeta(n, path)
}

func setMeta(n *inode, path string) error {
	if err := os.Chown(path, int(n.uid), int(n.gid)); err != nil {
		return err
	}
	if err := os.Chmod(path, os.FileMode(n.mode&0o777)|modeBits(n.mode)); err != nil {
		return err
	}
	return os.Chtimes(path, n.atime, n.mtime)
}

func modeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&syscall.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&syscall.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&syscall.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}
