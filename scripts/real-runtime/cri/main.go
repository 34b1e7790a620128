// Command cri is a tiny CRI client (runtime.v1) for tests: it drives
// containerd's CRI plugin the way kubelet does for pod sandboxes.
//
// Built by scripts/real-runtime/build.sh inside the kubernetes v1.20.2 GOPATH
// (GO111MODULE=off), so google.golang.org/grpc and k8s.io/cri-api come from
// that tree's vendor/ directory.
//
//	cri version  --socket PATH
//	cri status   --socket PATH
//	cri runp     --socket PATH --name N --namespace NS --uid U [--attempt 0]
//	             [--hostname H] [--cgroup-parent P] [--port [HOSTIP:]HOST:CONTAINER[/PROTO]]...
//	             [--label K=V]... [--annotation K=V]...
//	cri inspectp --socket PATH [--raw] ID
//	cri stopp    --socket PATH ID
//	cri rmp      --socket PATH ID
//	cri list     --socket PATH
//
// Every command prints one JSON document on stdout. On failure it prints the
// gRPC error on stderr and exits 1 (2 for a usage error). --timeout SECONDS
// bounds the whole call (default 120).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type options struct {
	values map[string]string
	multi  map[string][]string
	bools  map[string]bool
	args   []string
}

var (
	valueFlags = map[string]bool{
		"socket": true, "name": true, "namespace": true, "uid": true, "attempt": true,
		"hostname": true, "cgroup-parent": true, "timeout": true,
	}
	multiFlags = map[string]bool{"port": true, "label": true, "annotation": true}
	boolFlags  = map[string]bool{"raw": true}
)

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "cri: %s\n", msg)
	fmt.Fprintln(os.Stderr, "usage: cri {version|status|runp|inspectp|stopp|rmp|list} --socket PATH [flags] [ID]")
	os.Exit(2)
}

func fail(cmd string, err error) {
	fmt.Fprintf(os.Stderr, "cri %s: %v\n", cmd, err)
	os.Exit(1)
}

func parse(args []string) options {
	o := options{values: map[string]string{}, multi: map[string][]string{}, bools: map[string]bool{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			o.args = append(o.args, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			o.args = append(o.args, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		value, hasValue := "", false
		if j := strings.IndexByte(name, '='); j >= 0 {
			name, value, hasValue = name[:j], name[j+1:], true
		}
		switch {
		case boolFlags[name]:
			if hasValue {
				b, err := strconv.ParseBool(value)
				if err != nil {
					usage(fmt.Sprintf("--%s: %v", name, err))
				}
				o.bools[name] = b
			} else {
				o.bools[name] = true
			}
		case valueFlags[name] || multiFlags[name]:
			if !hasValue {
				if i+1 >= len(args) {
					usage(fmt.Sprintf("--%s needs a value", name))
				}
				i++
				value = args[i]
			}
			if multiFlags[name] {
				o.multi[name] = append(o.multi[name], value)
			} else {
				o.values[name] = value
			}
		default:
			usage(fmt.Sprintf("unknown flag %s", a))
		}
	}
	return o
}

func (o options) need(name string) string {
	v := o.values[name]
	if v == "" {
		usage(fmt.Sprintf("--%s is required", name))
	}
	return v
}

func (o options) oneID(cmd string) string {
	if len(o.args) != 1 || o.args[0] == "" {
		usage(fmt.Sprintf("%s takes exactly one sandbox ID", cmd))
	}
	return o.args[0]
}

func keyValues(flag string, list []string) map[string]string {
	if len(list) == 0 {
		return nil
	}
	m := map[string]string{}
	for _, kv := range list {
		j := strings.IndexByte(kv, '=')
		if j <= 0 {
			usage(fmt.Sprintf("--%s %q: want KEY=VALUE", flag, kv))
		}
		m[kv[:j]] = kv[j+1:]
	}
	return m
}

// parsePort reads [HOSTIP:]HOST:CONTAINER[/PROTO] (PROTO tcp, udp or sctp).
func parsePort(s string) *runtime.PortMapping {
	spec, proto := s, "tcp"
	if j := strings.LastIndexByte(s, '/'); j >= 0 {
		spec, proto = s[:j], strings.ToLower(s[j+1:])
	}
	pm := &runtime.PortMapping{}
	switch proto {
	case "tcp":
		pm.Protocol = runtime.Protocol_TCP
	case "udp":
		pm.Protocol = runtime.Protocol_UDP
	case "sctp":
		pm.Protocol = runtime.Protocol_SCTP
	default:
		usage(fmt.Sprintf("--port %q: unknown protocol %q", s, proto))
	}
	// The host IP may be IPv6 ("[fd00::1]:8080:80" or "fd00::1:8080:80"):
	// the last two colon-separated fields are the ports.
	j := strings.LastIndexByte(spec, ':')
	if j < 0 {
		usage(fmt.Sprintf("--port %q: want [HOSTIP:]HOST:CONTAINER[/PROTO]", s))
	}
	container, rest := spec[j+1:], spec[:j]
	host := rest
	if k := strings.LastIndexByte(rest, ':'); k >= 0 {
		host = rest[k+1:]
		pm.HostIp = strings.Trim(rest[:k], "[]")
	}
	hp, err1 := strconv.ParseUint(host, 10, 16)
	cp, err2 := strconv.ParseUint(container, 10, 16)
	if err1 != nil || err2 != nil || cp == 0 {
		usage(fmt.Sprintf("--port %q: bad port number", s))
	}
	pm.HostPort, pm.ContainerPort = int32(hp), int32(cp)
	return pm
}

func connect(ctx context.Context, socket string) (runtime.RuntimeServiceClient, *grpc.ClientConn, error) {
	if !filepath.IsAbs(socket) {
		if abs, err := filepath.Abs(socket); err == nil {
			socket = abs
		}
	}
	socket = strings.TrimPrefix(socket, "unix://")
	if _, err := os.Stat(socket); err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %v", socket, err)
	}
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dctx, socket,
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.FailOnNonTempDialError(true),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16*1024*1024)),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %v", socket, err)
	}
	return runtime.NewRuntimeServiceClient(conn), conn, nil
}

func printJSON(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fail("json", err)
	}
	fmt.Println(string(b))
}

// sandboxInfo is the part of containerd's verbose "info" we read.
type sandboxInfo struct {
	Pid         int `json:"pid"`
	RuntimeSpec struct {
		Linux struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
}

func main() {
	if len(os.Args) < 2 {
		usage("no command")
	}
	cmd := os.Args[1]
	o := parse(os.Args[2:])
	socket := o.values["socket"]
	if socket == "" {
		socket = os.Getenv("CRI_SOCKET")
	}
	if socket == "" {
		usage("--socket is required (or CRI_SOCKET)")
	}
	timeout := 120 * time.Second
	if t := o.values["timeout"]; t != "" {
		secs, err := strconv.ParseFloat(t, 64)
		if err != nil || secs <= 0 {
			usage("--timeout wants a positive number of seconds")
		}
		timeout = time.Duration(secs * float64(time.Second))
	}
	switch cmd {
	case "version", "status", "runp", "inspectp", "stopp", "rmp", "list":
	default:
		usage(fmt.Sprintf("unknown command %q", cmd))
	}
	// Validate the arguments before connecting.
	if cmd == "inspectp" || cmd == "stopp" || cmd == "rmp" {
		o.oneID(cmd)
	} else if len(o.args) != 0 {
		usage(fmt.Sprintf("%s takes no positional arguments", cmd))
	}
	var req *runtime.RunPodSandboxRequest
	if cmd == "runp" {
		name := o.need("name")
		attempt := uint64(0)
		if a := o.values["attempt"]; a != "" {
			v, err := strconv.ParseUint(a, 10, 32)
			if err != nil {
				usage("--attempt wants a number")
			}
			attempt = v
		}
		hostname := o.values["hostname"]
		if hostname == "" {
			hostname = name
		}
		var ports []*runtime.PortMapping
		for _, p := range o.multi["port"] {
			ports = append(ports, parsePort(p))
		}
		req = &runtime.RunPodSandboxRequest{Config: &runtime.PodSandboxConfig{
			Metadata: &runtime.PodSandboxMetadata{
				Name:      name,
				Namespace: o.need("namespace"),
				Uid:       o.need("uid"),
				Attempt:   uint32(attempt),
			},
			Hostname:     hostname,
			PortMappings: ports,
			Labels:       keyValues("label", o.multi["label"]),
			Annotations:  keyValues("annotation", o.multi["annotation"]),
			Linux: &runtime.LinuxPodSandboxConfig{
				CgroupParent: o.values["cgroup-parent"],
				SecurityContext: &runtime.LinuxSandboxSecurityContext{
					// As kubelet sets it for a pod without hostNetwork,
					// hostPID, hostIPC or shareProcessNamespace.
					NamespaceOptions: &runtime.NamespaceOption{
						Network: runtime.NamespaceMode_POD,
						Pid:     runtime.NamespaceMode_CONTAINER,
						Ipc:     runtime.NamespaceMode_POD,
					},
				},
			},
		}}
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, conn, err := connect(ctx, socket)
	if err != nil {
		fail(cmd, err)
	}
	defer conn.Close()

	switch cmd {
	case "version":
		r, err := client.Version(ctx, &runtime.VersionRequest{Version: "v1"})
		if err != nil {
			fail(cmd, err)
		}
		printJSON(map[string]string{
			"version":           r.Version,
			"runtimeName":       r.RuntimeName,
			"runtimeVersion":    r.RuntimeVersion,
			"runtimeApiVersion": r.RuntimeApiVersion,
		})
	case "status":
		r, err := client.Status(ctx, &runtime.StatusRequest{})
		if err != nil {
			fail(cmd, err)
		}
		type condition struct {
			Type    string `json:"type"`
			Status  bool   `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		conds := []condition{}
		if r.Status != nil {
			for _, c := range r.Status.Conditions {
				conds = append(conds, condition{c.Type, c.Status, c.Reason, c.Message})
			}
		}
		printJSON(map[string]interface{}{"conditions": conds})
	case "runp":
		r, err := client.RunPodSandbox(ctx, req)
		if err != nil {
			fail(cmd, err)
		}
		printJSON(map[string]string{"id": r.PodSandboxId})
	case "inspectp":
		id := o.oneID(cmd)
		r, err := client.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
		if err != nil {
			fail(cmd, err)
		}
		s := r.Status
		out := map[string]interface{}{
			"id": s.Id, "state": s.State.String(), "ip": "", "additionalIps": []string{},
			"netns": "", "pid": 0, "createdAt": s.CreatedAt,
		}
		if m := s.Metadata; m != nil {
			out["name"], out["namespace"], out["uid"], out["attempt"] = m.Name, m.Namespace, m.Uid, m.Attempt
		}
		if n := s.Network; n != nil {
			out["ip"] = n.Ip
			extra := []string{}
			for _, ip := range n.AdditionalIps {
				extra = append(extra, ip.Ip)
			}
			out["additionalIps"] = extra
		}
		if raw, ok := r.Info["info"]; ok {
			var info sandboxInfo
			if err := json.Unmarshal([]byte(raw), &info); err != nil {
				fail(cmd, fmt.Errorf("cannot read the verbose info: %v", err))
			}
			out["pid"] = info.Pid
			for _, ns := range info.RuntimeSpec.Linux.Namespaces {
				if ns.Type == "network" {
					out["netns"] = ns.Path
				}
			}
			if o.bools["raw"] {
				out["info"] = json.RawMessage(raw)
			}
		}
		printJSON(out)
	case "stopp":
		id := o.oneID(cmd)
		if _, err := client.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			fail(cmd, err)
		}
		printJSON(map[string]string{"id": id})
	case "rmp":
		id := o.oneID(cmd)
		if _, err := client.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			fail(cmd, err)
		}
		printJSON(map[string]string{"id": id})
	case "list":
		r, err := client.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
		if err != nil {
			fail(cmd, err)
		}
		items := []map[string]interface{}{}
		for _, s := range r.Items {
			item := map[string]interface{}{"id": s.Id, "state": s.State.String(), "createdAt": s.CreatedAt}
			if m := s.Metadata; m != nil {
				item["name"], item["namespace"], item["uid"], item["attempt"] = m.Name, m.Namespace, m.Uid, m.Attempt
			}
			items = append(items, item)
		}
		sort.Slice(items, func(i, j int) bool { return items[i]["createdAt"].(int64) < items[j]["createdAt"].(int64) })
		printJSON(items)
	}
}
