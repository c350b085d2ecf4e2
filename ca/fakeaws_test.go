package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// awsJSONServer is a local endpoint speaking the awsJson1.1 protocol:
// POST / with X-Amz-Target "<prefix>.<Operation>", JSON bodies, []byte
// fields as base64, errors as {"__type", "message"} with HTTP 400.
type awsJSONServer struct {
	t      testing.TB
	prefix string
	ops    map[string]func(body []byte) (any, *awsError)
	calls  sync.Map // op -> *atomic.Int64
}

type awsError struct {
	status int
	Type   string `json:"__type"`
	Msg    string `json:"message"`
}

func (s *awsJSONServer) count(op string) int64 {
	v, _ := s.calls.LoadOrStore(op, new(atomic.Int64))
	return v.(*atomic.Int64).Load()
}

func (s *awsJSONServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(e *awsError) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		if e.status == 0 {
			e.status = http.StatusBadRequest
		}
		w.WriteHeader(e.status)
		json.NewEncoder(w).Encode(e)
	}
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		fail(&awsError{Type: "UnknownOperationException", Msg: r.Method + " " + r.URL.Path})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		fail(&awsError{Type: "ValidationException", Msg: "content type " + ct})
		return
	}
	// The real SDK signs every request with SigV4.
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=AKIDTEST/") {
		fail(&awsError{status: 403, Type: "UnrecognizedClientException", Msg: "missing SigV4"})
		return
	}
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, s.prefix+".")
	h := s.ops[op]
	if !ok || h == nil {
		fail(&awsError{Type: "UnknownOperationException", Msg: target})
		return
	}
	v, _ := s.calls.LoadOrStore(op, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		fail(&awsError{Type: "SerializationException", Msg: err.Error()})
		return
	}
	out, e := h(body)
	if e != nil {
		fail(e)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(out)
}

// testAWSConfig points the real SDK at srv: static credentials, no retries.
func testAWSConfig(srv *httptest.Server) aws.Config {
	return aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		BaseEndpoint: aws.String(srv.URL),
		HTTPClient:   srv.Client(),
		Retryer:      func() aws.Retryer { return aws.NopRetryer{} },
	}
}

// fakeKMS holds real ECDSA keys and really signs.
type fakeKMS struct {
	*awsJSONServer
	mu   sync.Mutex
	keys map[string]*ecdsa.PrivateKey // key id -> key
	spec map[string]string
	down atomic.Bool // when set, Sign fails with KMSInternalException
}

func newFakeKMS(t testing.TB) (*fakeKMS, *httptest.Server) {
	f := &fakeKMS{keys: map[string]*ecdsa.PrivateKey{}, spec: map[string]string{}}
	f.awsJSONServer = &awsJSONServer{t: t, prefix: "TrentService", ops: map[string]func([]byte) (any, *awsError){
		"GetPublicKey": f.getPublicKey,
		"Sign":         f.sign,
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

// addKey creates a P-256 key under id (spec overrides the advertised key
// spec for negative tests).
func (f *fakeKMS) addKey(t testing.TB, id, spec string) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[id] = k
	f.spec[id] = spec
	return k
}

func (f *fakeKMS) key(id string) (*ecdsa.PrivateKey, string, *awsError) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[id]
	if !ok {
		return nil, "", &awsError{Type: "NotFoundException", Msg: fmt.Sprintf("Key '%s' does not exist", id)}
	}
	return k, f.spec[id], nil
}

func (f *fakeKMS) getPublicKey(body []byte) (any, *awsError) {
	var in struct{ KeyId string }
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &awsError{Type: "SerializationException", Msg: err.Error()}
	}
	k, spec, e := f.key(in.KeyId)
	if e != nil {
		return nil, e
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, &awsError{status: 500, Type: "KMSInternalException", Msg: err.Error()}
	}
	return map[string]any{
		"KeyId":             "arn:aws:kms:us-east-1:111122223333:key/" + in.KeyId,
		"KeySpec":           spec,
		"KeyUsage":          "SIGN_VERIFY",
		"PublicKey":         der, // []byte marshals as base64
		"SigningAlgorithms": []string{"ECDSA_SHA_256"},
	}, nil
}

func (f *fakeKMS) sign(body []byte) (any, *awsError) {
	var in struct {
		KeyId            string
		Message          []byte // base64 in JSON
		MessageType      string
		SigningAlgorithm string
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &awsError{Type: "SerializationException", Msg: err.Error()}
	}
	if f.down.Load() {
		return nil, &awsError{status: 500, Type: "KMSInternalException", Msg: "injected outage"}
	}
	k, _, e := f.key(in.KeyId)
	if e != nil {
		return nil, e
	}
	if in.MessageType != "DIGEST" || in.SigningAlgorithm != "ECDSA_SHA_256" || len(in.Message) != 32 {
		return nil, &awsError{Type: "ValidationException", Msg: fmt.Sprintf("bad sign request %s %s len %d", in.MessageType, in.SigningAlgorithm, len(in.Message))}
	}
	sig, err := ecdsa.SignASN1(rand.Reader, k, in.Message)
	if err != nil {
		return nil, &awsError{status: 500, Type: "KMSInternalException", Msg: err.Error()}
	}
	return map[string]any{"KeyId": in.KeyId, "Signature": sig, "SigningAlgorithm": in.SigningAlgorithm}, nil
}

// fakeSecrets serves GetSecretValue from a map of id -> secret string.
type fakeSecrets struct {
	*awsJSONServer
	secrets map[string]string
	binary  map[string][]byte
}

func newFakeSecrets(t testing.TB) (*fakeSecrets, *httptest.Server) {
	f := &fakeSecrets{secrets: map[string]string{}, binary: map[string][]byte{}}
	f.awsJSONServer = &awsJSONServer{t: t, prefix: "secretsmanager", ops: map[string]func([]byte) (any, *awsError){
		"GetSecretValue": f.get,
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeSecrets) get(body []byte) (any, *awsError) {
	var in struct{ SecretId string }
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &awsError{Type: "SerializationException", Msg: err.Error()}
	}
	out := map[string]any{"ARN": in.SecretId, "Name": "ca", "VersionId": "v1", "VersionStages": []string{"AWSCURRENT"}}
	if s, ok := f.secrets[in.SecretId]; ok {
		out["SecretString"] = s
		return out, nil
	}
	if b, ok := f.binary[in.SecretId]; ok {
		out["SecretBinary"] = b
		return out, nil
	}
	return nil, &awsError{Type: "ResourceNotFoundException", Msg: "Secrets Manager can't find the specified secret."}
}

func kmsClient(srv *httptest.Server) *kms.Client { return kms.NewFromConfig(testAWSConfig(srv)) }
