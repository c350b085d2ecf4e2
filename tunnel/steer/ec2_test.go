//go:build linux

package steer

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

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
	fe := &fakeEC2{}
	es := httptest.NewServer(fe)
	t.Cleanup(es.Close)

	api := ec2.New(ec2.Options{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(es.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
	})
	const id = "i-0123456789abcdef0"
	if err := DisableSourceDestCheck(context.Background(), id, api); err != nil {
		t.Fatal(err)
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

// fakeEnv is an AWS environment: an instance id (or its error) and an
// SDK configuration pointing at the EC2 fake.
type fakeEnv struct {
	id      string
	idErr   error
	cfg     aws.Config
	service []string
}

func (f *fakeEnv) InstanceID(context.Context) (string, error) { return f.id, f.idErr }
func (f *fakeEnv) Config(_ context.Context, service string) (aws.Config, error) {
	f.service = append(f.service, service)
	return f.cfg, nil
}

// TestDisableSourceDestCheckFromEnv: Start's path takes the instance id
// and the EC2 configuration (endpoint override included) from the AWS
// environment it was given; no instance id (IMDS refused, see awsenv's
// TestIMDSv1Refused) means no EC2 call; no environment is an error.
func TestDisableSourceDestCheckFromEnv(t *testing.T) {
	fe := &fakeEC2{}
	es := httptest.NewServer(fe)
	t.Cleanup(es.Close)
	s := &Steerer{log: slog.New(slog.DiscardHandler)}
	if err := s.disableSourceDestCheck(context.Background()); err == nil || !strings.Contains(err.Error(), "SetAWS") {
		t.Fatalf("without an environment: %v", err)
	}
	env := &fakeEnv{idErr: errors.New("instance id: imds instance-id: refused"), cfg: aws.Config{
		Region: "eu-west-1", BaseEndpoint: aws.String(es.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "")}}
	s.SetAWS(env)
	if err := s.disableSourceDestCheck(context.Background()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("IMDS refused: %v", err)
	}
	if len(fe.forms) != 0 {
		t.Fatal("EC2 called without an instance id")
	}
	env.id, env.idErr = "i-0123456789abcdef0", nil
	if err := s.disableSourceDestCheck(context.Background()); err != nil {
		t.Fatal(err)
	}
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if len(fe.forms) != 1 || fe.forms[0].Get("InstanceId") != env.id || len(env.service) != 1 || env.service[0] != "ec2" {
		t.Fatalf("forms %v, services asked %v", fe.forms, env.service)
	}
}
