// Command load drives a closed loop of one call kind at a given concurrency against etcd
// or the asset service and prints the calls per second as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	kind := flag.String("kind", "", "etcd-put, etcd-get, asset-create or asset-get")
	addr := flag.String("addr", "", "HOST:PORT of etcd's client URL or of the asset service")
	callers := flag.Int("callers", 64, "calls in flight")
	calls := flag.Int("calls", 10000, "calls in all")
	conns := flag.Int("conns", 0, "connections (default: one per 16 callers, so that several server processes behind one port each get some)")
	flag.Parse()
	if *conns <= 0 {
		*conns = (*callers + 15) / 16
	}
	call, closeAll, err := caller(*kind, *addr, *conns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
	defer closeAll()
	ctx := context.Background()
	for i := 0; i < 200; i++ { // warm up: connections open, first pages read
		if err := call(ctx, i%*conns, i); err != nil {
			fmt.Fprintln(os.Stderr, "load: warm-up:", err)
			os.Exit(1)
		}
	}
	var next, failed int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < *callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i > int64(*calls) {
					return
				}
				if err := call(ctx, c%*conns, int(i)); err != nil {
					if atomic.AddInt64(&failed, 1) == 1 {
						fmt.Fprintln(os.Stderr, "load:", err)
					}
				}
			}
		}(c)
	}
	wg.Wait()
	took := time.Since(start).Seconds()
	out, _ := json.Marshal(map[string]any{
		"kind": *kind, "callers": *callers, "calls": *calls, "seconds": took,
		"per_s": float64(*calls) / took, "failed": failed,
	})
	fmt.Println(string(out))
	if failed > 0 {
		os.Exit(1)
	}
}

type callFunc func(ctx context.Context, conn int, i int) error

func caller(kind, addr string, conns int) (callFunc, func(), error) {
	switch kind {
	case "etcd-put", "etcd-get":
		clients := make([]*clientv3.Client, conns)
		for n := range clients {
			c, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 10 * time.Second})
			if err != nil {
				return nil, nil, err
			}
			clients[n] = c
		}
		closeAll := func() {
			for _, c := range clients {
				c.Close()
			}
		}
		value := string(make([]byte, 200))
		if kind == "etcd-put" {
			return func(ctx context.Context, conn, i int) error {
				_, err := clients[conn].Put(ctx, fmt.Sprintf("/assets/%d", i), value)
				return err
			}, closeAll, nil
		}
		if _, err := clients[0].Put(context.Background(), "/assets/read", value); err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, conn, _ int) error {
			_, err := clients[conn].Get(ctx, "/assets/read", clientv3.WithSerializable())
			return err
		}, closeAll, nil
	case "asset-create", "asset-get":
		stubs := make([]assetv1.AssetServiceClient, conns)
		var opened []*grpc.ClientConn
		for n := range stubs {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, nil, err
			}
			opened = append(opened, cc)
			stubs[n] = assetv1.NewAssetServiceClient(cc)
		}
		closeAll := func() {
			for _, cc := range opened {
				cc.Close()
			}
		}
		if kind == "asset-create" {
			return func(ctx context.Context, conn, i int) error {
				_, err := stubs[conn].CreatePendingAsset(ctx, &assetv1.CreatePendingAssetRequest{
					TaskId: "bench", Label: fmt.Sprintf("out-%d", i), Type: assetv1.AssetType_ASSET_TYPE_VALUE,
				})
				return err
			}, closeAll, nil
		}
		made, err := stubs[0].CreateValueAsset(context.Background(), &assetv1.CreateValueAssetRequest{
			Label: "bench", Value: &assetv1.Value{Kind: &assetv1.Value_Json{Json: `{"k": 1}`}},
		})
		if err != nil {
			return nil, nil, err
		}
		id := made.GetAsset().GetId()
		return func(ctx context.Context, conn, _ int) error {
			_, err := stubs[conn].GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: id})
			return err
		}, closeAll, nil
	}
	return nil, nil, fmt.Errorf("unknown -kind %q", kind)
}
