//go:build linux

package steer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// fakeIMDS speaks IMDSv2: a PUT for a token, GETs that must carry it.
func fakeIMDS(t *testing.T) *httptest.Server {
	const token = "tok-4757"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			if r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" {
				http.Error(w, "missing ttl", http.StatusBadRequest)
				return
			}
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			w.Write([]byte(token))
		case r.Method == http.MethodGet && r.Header.Get("X-Aws-Ec2-Metadata-Token") != token:
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		case r.URL.Path == "/latest/meta-data/instance-id":
			w.Write([]byte("i-0123456789abcdef0"))
		case r.URL.Path == "/latest/meta-data/placement/region":
			w.Write([]byte("eu-west-1"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// fakeEC2 speaks the EC2 query protocol: form-encoded POST, XML answer.
type fakeEC2 struct {
	mu    sync.Mutex
	forms []url.Values
	auth  []string
}

func (f *fakeEC2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		http.Error(w, "want form POST", http.StatusBadRequest)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.forms = append(f.forms, r.PostForm)
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	f.mu.Unlock()
	if r.PostForm.Get("Action") != "ModifyInstanceAttribute" {
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>InvalidAction</Code><Message>unknown</Message></Error></Errors><RequestID>r1</RequestID></Response>`))
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?>
<ModifyInstanceAttributeResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId><return>true</return></ModifyInstanceAttributeResponse>`))
}

func TestDisableSourceDestCheck(t *testing.T) {
	md := fakeIMDS(t)
	fe := &fakeEC2{}
	es := httptest.NewServer(fe)
	t.Cleanup(es.Close)

	mdc := imds.New(imds.Options{Endpoint: md.URL, EnableFallback: aws.FalseTernary})
	api := ec2.New(ec2.Options{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(es.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
	})
	id, err := DisableSourceDestCheck(context.Background(), mdc, api)
	if err != nil {
		t.Fatal(err)
	}
	if id != "i-0123456789abcdef0" {
		t.Fatalf("instance id %q", id)
	}
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if len(fe.forms) != 1 {
		t.Fatalf("%d EC2 calls", len(fe.forms))
	}
	f := fe.forms[0]
	// SourceDestCheck=false means: the check is OFF, forwarding allowed.
	if f.Get("InstanceId") != id || f.Get("SourceDestCheck.Value") != "false" {
		t.Fatalf("form %v", f)
	}
	if !strings.Contains(fe.auth[0], "AKIDEXAMPLE/") || !strings.Contains(fe.auth[0], "/eu-west-1/ec2/aws4_request") {
		t.Fatalf("not SigV4 signed for ec2 in eu-west-1: %q", fe.auth[0])
	}
}

func TestDisableSourceDestCheckIMDSv1Refused(t *testing.T) {
	// An IMDS that refuses tokens (v1 only) must fail: no fallback.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		w.Write([]byte("i-v1"))
	}))
	t.Cleanup(srv.Close)
	mdc := imds.New(imds.Options{Endpoint: srv.URL, EnableFallback: aws.FalseTernary})
	fe := &fakeEC2{}
	es := httptest.NewServer(fe)
	t.Cleanup(es.Close)
	api := ec2.New(ec2.Options{Region: "eu-west-1", BaseEndpoint: aws.String(es.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "")})
	if _, err := DisableSourceDestCheck(context.Background(), mdc, api); err == nil {
		t.Fatal("succeeded through IMDSv1")
	}
	if len(fe.forms) != 0 {
		t.Fatal("EC2 called without an instance id from IMDSv2")
	}
}
