// Command lazyfs mounts a folder through FUSE and forgets, at a "power cut", everything
// that was not fsynced, as a disk would. See tests/powerloss/README.md for the rules.
//
//	lazyfs [-state FILE] [-debug] BACKING MOUNTPOINT
//
// It prints "lazyfs: serving ..." once mounted. SIGUSR1 cuts the power: every request
// fails from then on, the backing folder is rewritten to hold exactly what was durable,
// the mount goes, and the program prints "lazyfs: power cut {json}" and exits 0.
// SIGTERM or SIGINT is a clean shutdown: everything is kept, as after sync(1) and umount;
// so is the death of the process that started it.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	statePath := flag.String("state", "", "inode numbers kept across mounts (default: BACKING.lazyfs-state)")
	debug := flag.Bool("debug", false, "log every FUSE request")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-state FILE] [-debug] BACKING MOUNTPOINT\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	backing, err := filepath.Abs(flag.Arg(0))
	check(err)
	mountpoint, err := filepath.Abs(flag.Arg(1))
	check(err)
	if *statePath == "" {
		*statePath = backing + ".lazyfs-state"
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	// Output goes to a pipe whose reader may be dead: an EPIPE, not death, so the mount
	// is still taken down.
	signal.Ignore(syscall.SIGPIPE)

	st, err := readState(*statePath)
	check(err)
	inodes, next, err := load(backing, st)
	check(err)
	fs := newLazyFS(inodes, next)
	server, err := fuse.NewServer(fs, mountpoint, &fuse.MountOptions{
		DirectMountStrict:  true, // as root, mount(2) itself: no fusermount needed
		FsName:             backing,
		Name:               "lazyfs",
		DisableReadDirPlus: true,
		MaxWrite:           1 << 20,
		Debug:              *debug,
	})
	check(err)
	go server.Serve()
	check(server.WaitMount())
	fmt.Printf("lazyfs: serving %s on %s (%d inodes)\n", backing, mountpoint, len(inodes))

	cut := false
	orphaned := parentGone()
	select {
	case sig := <-signals:
		cut = sig == syscall.SIGUSR1
	case <-orphaned:
		fmt.Fprintln(os.Stderr, "lazyfs: the process that started it is gone; unmounting")
	}
	report := fs.stop(cut)
	im, err := materialize(fs.inodes[rootIno], backing, *statePath, cut)
	unmount(server, mountpoint)
	check(err)
	if cut {
		report.Loops = im.loops
		line, _ := json.Marshal(report)
		fmt.Printf("lazyfs: power cut %s\n", line)
	} else {
		fmt.Println("lazyfs: unmounted cleanly, everything kept")
	}
}

// cutReport says what the power cut threw away (and so that it was not a no-op).
type cutReport struct {
	Fsyncs         uint64 `json:"fsyncs"`
	DirFsyncs      uint64 `json:"dir_fsyncs"`
	UnsyncedFiles  int    `json:"unsynced_files"`
	UnsyncedDirs   int    `json:"unsynced_dirs"`
	DurableEntries int    `json:"durable_entries"`
	Loops          int    `json:"loops"`
}

// stop turns the power off (or syncs everything first, for a clean shutdown).
func (fs *lazyFS) stop(cut bool) cutReport {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.dead = true
	r := cutReport{Fsyncs: fs.fsyncs, DirFsyncs: fs.dsyncs}
	for _, n := range fs.inodes {
		switch {
		case n.isFile() && !n.live.same(n.durable):
			r.UnsyncedFiles++
		case n.isDir() && !n.entriesSynced():
			r.UnsyncedDirs++
		}
		r.DurableEntries += len(n.durableEntries)
	}
	return r
}

// parentGone is closed once the parent process has died (this one is re-parented), so a
// test runner killed outright leaves no mount behind.
func parentGone() <-chan struct{} {
	gone := make(chan struct{})
	parent := os.Getppid()
	go func() {
		for os.Getppid() == parent {
			time.Sleep(200 * time.Millisecond)
		}
		close(gone)
	}()
	return gone
}

func unmount(server *fuse.Server, mountpoint string) {
	done := make(chan error, 1)
	go func() { done <- server.Unmount() }()
	select {
	case err := <-done:
		if err == nil {
			return
		}
		fmt.Fprintf(os.Stderr, "lazyfs: unmount %s: %v; detaching it\n", mountpoint, err)
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "lazyfs: unmount %s hangs; detaching it\n", mountpoint)
	}
	if err := syscall.Unmount(mountpoint, syscall.MNT_DETACH); err != nil {
		fmt.Fprintf(os.Stderr, "lazyfs: detach %s: %v\n", mountpoint, err)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "lazyfs: %v\n", err)
		os.Exit(1)
	}
}
