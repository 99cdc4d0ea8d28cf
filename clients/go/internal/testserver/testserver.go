// Package testserver runs the Asset Service (`python -m asset_service`) for
// the client's tests: on port 0 in a temporary folder, stopped, killed and
// restarted on the same port with the same data.
package testserver

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options shape the server.
type Options struct {
	// Tokens gives the server a tokens file (Server.Token has the orchestrator
	// role) and a task-token secret.
	Tokens bool
	// Args are further flags.
	Args []string
}

// Server is one server and its folder: a storage root, an sqlite database and
// an import root (ImportRoot).
type Server struct {
	Addr       string
	ImportRoot string
	// Token is a bearer token with the orchestrator role (with Options.Tokens).
	Token string
	dir   string
	args  []string
	cmd   *exec.Cmd
	done  chan struct{} // closed once cmd has been waited for
	mu    sync.Mutex
	log   strings.Builder
}

var listening = regexp.MustCompile(`asset-service listening on (\S+:\d+)`)

// Python is $ASSET_SERVICE_PYTHON, else the repository's .venv (`make install`).
func Python() (string, error) {
	if p := os.Getenv("ASSET_SERVICE_PYTHON"); p != "" {
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, ".venv", "bin", "python")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no Python for the server: set ASSET_SERVICE_PYTHON or run `make install` (%w)", err)
	}
	return p, nil
}

// repoRoot is two folders above clients/go's go.mod.
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the clients/go module")
	}
	return filepath.Join(filepath.Dir(mod), "..", ".."), nil
}

// Start runs a server on 127.0.0.1, port 0, in a new temporary folder.
func Start(opts Options) (*Server, error) {
	dir, err := os.MkdirTemp("", "asset-service-go-test-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, ImportRoot: filepath.Join(dir, "worker")}
	if err := os.Mkdir(s.ImportRoot, 0o755); err != nil {
		return nil, err
	}
	s.args = []string{
		"--storage-root", filepath.Join(dir, "data"),
		"--database-url", "sqlite:///" + filepath.Join(dir, "assets.db"),
		"--import-root", s.ImportRoot,
		"--shutdown-grace", "0.5", // a watch open at SIGTERM is ended after this
		"--lease-check-interval", "0.2", // a lease's expiry is seen within 0.2 s
	}
	if opts.Tokens {
		token, tokens, secret, err := writeSecurityFiles(dir)
		if err != nil {
			return nil, err
		}
		s.Token = token
		s.args = append(s.args, "--tokens-file", tokens, "--token-secret-file", secret)
	}
	s.args = append(s.args, opts.Args...)
	if err := s.run("127.0.0.1:0"); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// run starts the process listening on listen and waits for its address.
func (s *Server) run(listen string) error {
	python, err := Python()
	if err != nil {
		return err
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command(python, append([]string{"-m", "asset_service", "--listen", listen}, s.args...)...)
	cmd.Dir = root
	for _, kv := range os.Environ() { // the server reads ASSET_SERVICE_* as settings
		if !strings.HasPrefix(kv, "ASSET_SERVICE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.done = cmd, make(chan struct{})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() { // read to the end, so the server never blocks on a full pipe
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(s.done)
	}()
	select {
	case addr := <-found:
		s.Addr = addr
		return nil
	case <-s.done:
		return fmt.Errorf("the server exited:\n%s", s.Log())
	case <-time.After(60 * time.Second):
		s.Kill()
		return fmt.Errorf("no %q line within 60 s:\n%s", listening, s.Log())
	}
}

// Log is what the server wrote to stderr so far (every start).
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// Stop sends SIGTERM (a graceful stop) and waits; after 15 s it kills.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.Kill()
	}
}

// Kill sends SIGKILL (a crash) and waits for the process to be gone.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Restart starts the server again on the same address with the same data,
// after Stop or Kill.
func (s *Server) Restart() error {
	select {
	case <-s.done:
	default:
		return errors.New("restart: the server is still running")
	}
	var err error
	for range 50 { // the port may take a moment to be free again
		if err = s.run(s.Addr); err == nil || !strings.Contains(err.Error(), "exited") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Close stops the server and removes its folder.
func (s *Server) Close() {
	s.Stop()
	_ = os.RemoveAll(s.dir)
}

// writeSecurityFiles writes a tokens file granting a fresh random token the
// orchestrator role (the file holds only its SHA-256) and a task-token secret.
func writeSecurityFiles(dir string) (token, tokensFile, secretFile string, err error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(raw) // the shape of secrets.token_urlsafe(32)
	sum := sha256.Sum256([]byte(token))
	tokensFile = filepath.Join(dir, "tokens.toml")
	entry := fmt.Sprintf("[[tokens]]\nprincipal = \"go-test\"\nroles = [\"orchestrator\"]\nsha256 = %q\n", hex.EncodeToString(sum[:]))
	if err := os.WriteFile(tokensFile, []byte(entry), 0o600); err != nil {
		return "", "", "", err
	}
	secret := make([]byte, 48)
	if _, err := rand.Read(secret); err != nil {
		return "", "", "", err
	}
	secretFile = filepath.Join(dir, "task-secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return "", "", "", err
	}
	return token, tokensFile, secretFile, nil
}
